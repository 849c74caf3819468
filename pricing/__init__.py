"""meterflow rating engine: pure Python (no Flink, no database), Decimal-only.

Public API (see docs/PRICING.md):

* price books — :class:`PriceBook`, :class:`PriceVersion`, :func:`load_price_book`,
  :func:`parse_price_book`, :func:`price_book_from_data`; ``PriceBook.version_at`` / ``model_at``
* rating — :func:`rate_period`, :func:`rate_windows`, :class:`PeriodRater`, :class:`Charge`,
  :func:`charge_id`
* periods — :mod:`pricing.periods`
* money — :func:`round_money`, :func:`minor_units`, :data:`CTX`
* quotes — :func:`quote`
"""

from pricing.book import (
    PriceBook,
    PriceVersion,
    load_price_book,
    parse_price_book,
    price_book_from_data,
)
from pricing.charges import CAUSES, Charge, charge_id
from pricing.errors import (
    CustomerNotPricedError,
    MeterNotPricedError,
    NaiveDatetimeError,
    NoPriceVersionError,
    PriceBookError,
    PricingError,
)
from pricing.money import CTX, RoundedAmount, minor_units, round_money, to_decimal
from pricing.quote import Quote, quote
from pricing.rater import PeriodRater, PeriodRating, rate_period, rate_windows

__all__ = [
    "CAUSES",
    "CTX",
    "Charge",
    "CustomerNotPricedError",
    "MeterNotPricedError",
    "NaiveDatetimeError",
    "NoPriceVersionError",
    "PeriodRater",
    "PeriodRating",
    "PriceBook",
    "PriceBookError",
    "PriceVersion",
    "PricingError",
    "Quote",
    "RoundedAmount",
    "charge_id",
    "load_price_book",
    "minor_units",
    "parse_price_book",
    "price_book_from_data",
    "quote",
    "rate_period",
    "rate_windows",
    "round_money",
    "to_decimal",
]
