"""Billing periods (calendar months, UTC) and epoch-aligned tumbling windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from pricing.errors import NaiveDatetimeError
from pricing.periods import (
    from_epoch_ms,
    period_end,
    period_start,
    to_epoch_ms,
    window_bounds,
    window_ranges,
)

PERIODS = [
    # (instant, start, end)
    (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
     datetime(2026, 2, 1, tzinfo=UTC)),  # exactly the first instant of the month
    (datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
     datetime(2026, 2, 1, tzinfo=UTC)),  # the last instant of January
    (datetime(2026, 12, 15, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC),
     datetime(2027, 1, 1, tzinfo=UTC)),  # December rolls into the next year
    (datetime(2028, 2, 29, 12, tzinfo=UTC), datetime(2028, 2, 1, tzinfo=UTC),
     datetime(2028, 3, 1, tzinfo=UTC)),  # leap day
    (datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
     datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),  # local March is UTC Feb
]


@pytest.mark.parametrize(("instant", "start", "end"), PERIODS)
def test_the_billing_period_is_the_calendar_month_in_utc(instant, start, end):
    assert period_start(instant) == start
    assert period_end(instant) == end
    assert period_start(instant).tzinfo is UTC


WINDOWS = [
    # (instant, size, start)
    (datetime(2026, 1, 1, 10, 30, tzinfo=UTC), timedelta(hours=1),
     datetime(2026, 1, 1, 10, tzinfo=UTC)),  # inside an hour
    (datetime(2026, 1, 1, 10, tzinfo=UTC), timedelta(hours=1),
     datetime(2026, 1, 1, 10, tzinfo=UTC)),  # exactly at a window start: belongs to that window
    (datetime(2026, 1, 1, 10, 59, 59, 999999, tzinfo=UTC), timedelta(hours=1),
     datetime(2026, 1, 1, 10, tzinfo=UTC)),  # last microsecond of the window
    (datetime(2026, 1, 1, 13, tzinfo=UTC), timedelta(hours=8),
     datetime(2026, 1, 1, 8, tzinfo=UTC)),  # 8 h windows aligned to midnight UTC
    (datetime(2026, 1, 1, 0, 7, tzinfo=UTC), timedelta(minutes=5),
     datetime(2026, 1, 1, 0, 5, tzinfo=UTC)),  # 5 min windows
    (datetime(1969, 12, 31, 23, 30, tzinfo=UTC), timedelta(hours=1),
     datetime(1969, 12, 31, 23, tzinfo=UTC)),  # before the epoch: still floors
]


@pytest.mark.parametrize(("instant", "size", "start"), WINDOWS)
def test_tumbling_windows_are_epoch_aligned(instant, size, start):
    assert window_bounds(instant, size) == (start, start + size)


@pytest.mark.parametrize("size", [timedelta(hours=7), timedelta(minutes=7), timedelta(0),
                                  timedelta(hours=-1), timedelta(hours=48)])
def test_a_window_size_that_does_not_divide_24_hours_is_rejected(size):
    with pytest.raises(ValueError):
        window_bounds(datetime(2026, 1, 1, tzinfo=UTC), size)


def test_a_month_of_hourly_windows_has_one_window_per_hour():
    ws = list(window_ranges(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC),
                            timedelta(hours=1)))
    assert len(ws) == 744 and ws[0][0] == datetime(2026, 1, 1, tzinfo=UTC)
    assert ws[-1][1] == datetime(2026, 2, 1, tzinfo=UTC)


def test_naive_datetimes_are_an_error():
    with pytest.raises(NaiveDatetimeError):
        period_start(datetime(2026, 1, 1))  # noqa: DTZ001 - naive on purpose: it must be refused
    with pytest.raises(NaiveDatetimeError):
        window_bounds(datetime(2026, 1, 1), timedelta(hours=1))  # noqa: DTZ001 - naive on purpose: it must be refused


def test_epoch_milliseconds_round_trip():
    dt = datetime(2026, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert from_epoch_ms(to_epoch_ms(dt)) == dt
    assert to_epoch_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
