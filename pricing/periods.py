"""Billing periods (calendar months in UTC) and tumbling event-time windows.

All datetimes are aware; they are normalised to UTC. A naive datetime raises
:class:`~pricing.errors.NaiveDatetimeError` (a ValueError).

Windows are aligned to the Unix epoch, like Flink's ``TumblingEventTimeWindows`` with offset 0 and
quix-streams' ``get_window_ranges``. Because the size must divide 24 hours, windows are aligned to
UTC midnight, so a window never straddles two billing periods (months start at midnight UTC).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pricing.errors import NaiveDatetimeError

_DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ensure_utc(dt: datetime, what: str = "datetime") -> datetime:
    """Return ``dt`` converted to UTC; raise NaiveDatetimeError if it has no timezone."""
    if not isinstance(dt, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        raise NaiveDatetimeError(
            f"{what} {dt.isoformat()} is naive; an aware datetime (UTC) is required"
        )
    if dt.tzinfo is UTC:
        return dt
    return dt.astimezone(UTC)


def isoformat_utc(dt: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix: ``2026-01-01T00:00:00Z`` (microseconds if any)."""
    if dt.tzinfo is not UTC:
        dt = ensure_utc(dt)
    # isoformat() of a UTC datetime ends in "+00:00" and shows microseconds only when non-zero
    return dt.isoformat()[:-6] + "Z"


def parse_instant(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset (``Z`` or ``+hh:mm``) into aware UTC."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp") from None
    return ensure_utc(dt, f"instant {text!r}")


# --- billing periods --------------------------------------------------------------------------


def period_start(instant: datetime) -> datetime:
    """Start (inclusive) of the calendar month in UTC that contains ``instant``."""
    dt = ensure_utc(instant, "instant")
    return datetime(dt.year, dt.month, 1, tzinfo=UTC)


def period_end(instant: datetime) -> datetime:
    """End (exclusive) of the calendar month in UTC that contains ``instant`` = next period's start."""
    start = period_start(instant)
    if start.month == 12:
        return datetime(start.year + 1, 1, 1, tzinfo=UTC)
    return datetime(start.year, start.month + 1, 1, tzinfo=UTC)


def period_bounds(instant: datetime) -> tuple[datetime, datetime]:
    return period_start(instant), period_end(instant)


def is_period_start(dt: datetime) -> bool:
    return period_start(dt) == ensure_utc(dt)


# --- windows ----------------------------------------------------------------------------------


def _size_us(size: timedelta) -> int:
    if not isinstance(size, timedelta):
        raise TypeError(f"window size must be a timedelta, got {type(size).__name__}")
    us = (size.days * 86_400 + size.seconds) * 1_000_000 + size.microseconds
    if us <= 0:
        raise ValueError(f"window size must be positive, got {size}")
    if _DAY_US % us:
        raise ValueError(f"window size {size} must divide 24 hours exactly")
    return us


def validate_window_size(size: timedelta) -> timedelta:
    """Return ``size`` if it is positive and divides 24 hours, else raise ValueError."""
    _size_us(size)
    return size


def window_bounds(instant: datetime, size: timedelta) -> tuple[datetime, datetime]:
    """The tumbling window ``[start, end)`` of ``size`` containing ``instant`` (epoch-aligned)."""
    us = _size_us(size)
    dt = ensure_utc(instant, "instant")
    delta = dt - _EPOCH
    t = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    start = _EPOCH + timedelta(microseconds=t - t % us)
    return start, start + size


def window_start(instant: datetime, size: timedelta) -> datetime:
    return window_bounds(instant, size)[0]


def window_ranges(start: datetime, end: datetime, size: timedelta) -> Iterator[tuple[datetime, datetime]]:
    """Every tumbling window of ``size`` that overlaps ``[start, end)``, in order."""
    s, _ = window_bounds(start, size)
    end = ensure_utc(end, "end")
    while s < end:
        yield s, s + size
        s = s + size


def to_epoch_ms(dt: datetime) -> int:
    """Milliseconds since the Unix epoch (Flink's timestamps); sub-millisecond parts are floored."""
    delta = ensure_utc(dt) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_epoch_ms(ms: int) -> datetime:
    if not isinstance(ms, int) or isinstance(ms, bool):
        raise TypeError(f"epoch milliseconds must be an int, got {type(ms).__name__}")
    return _EPOCH + timedelta(milliseconds=ms)


# --- billing periods as values --------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A billing period, a calendar month in UTC: [start, end) (DESIGN.md §3)."""

    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        return f"{self.start.year:04d}-{self.start.month:02d}"

    def __str__(self) -> str:
        return self.label


_PERIOD_RE = re.compile(r"^(\d{4})-(\d{2})$")


def parse_period(text: str) -> Period:
    """``2026-01`` -> [2026-01-01T00:00Z, 2026-02-01T00:00Z)."""
    m = _PERIOD_RE.match(text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"period {text!r} must be YYYY-MM, e.g. 2026-01")
    y, mo = int(m.group(1)), int(m.group(2))
    start = datetime(y, mo, 1, tzinfo=UTC)
    end = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC)
    return Period(start, end)
