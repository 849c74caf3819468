"""Pure parts of the invoice job: billing periods and minor units."""

from datetime import UTC, datetime

import pytest

from pricing.money import minor_units
from pricing.periods import parse_period

# (input, expected start, expected end)
PERIODS = [
    ("2026-01", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)),
    # December rolls over into the next year
    ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    # February of a leap year ends on March 1st like any other
    ("2028-02", datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
]


@pytest.mark.parametrize(("text", "start", "end"), PERIODS)
def test_a_period_is_a_utc_calendar_month(text, start, end):
    p = parse_period(text)
    assert (p.start, p.end, p.label) == (start, end, text)


@pytest.mark.parametrize("bad", ["2026-13", "2026-00", "2026-1", "26-01", "2026/01", ""])
def test_a_malformed_period_is_rejected_with_its_format(bad):
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_period(bad)


# ISO 4217 exponents: dollars have cents, yen has none, dinars have fils
@pytest.mark.parametrize(("cur", "exp"), [("USD", 2), ("EUR", 2), ("JPY", 0), ("KWD", 3)])
def test_minor_units_follow_iso_4217(cur, exp):
    assert minor_units(cur) == exp
