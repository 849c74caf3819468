"""Exceptions raised by the rating engine.

Every error names what it is about (price book, version, customer, meter, instant) so that the
message alone tells an operator what to fix. A missing price is always an error, never a zero.
"""

from __future__ import annotations

from datetime import datetime


class PricingError(Exception):
    """Base class of every error raised by :mod:`pricing`."""


class PriceBookError(PricingError, ValueError):
    """A price book (file or object) is invalid. The message names the file and each bad field."""


class NaiveDatetimeError(PricingError, ValueError):
    """A datetime without a timezone reached code that needs aware UTC datetimes."""


class NoPriceVersionError(PricingError, LookupError):
    """No version of the price book is effective at the instant (it is before the first version)."""

    def __init__(
        self,
        *,
        price_book_id: str,
        instant: datetime,
        customer_id: str | None = None,
        meter: str | None = None,
        first_effective_from: datetime | None = None,
    ) -> None:
        self.price_book_id = price_book_id
        self.instant = instant
        self.customer_id = customer_id
        self.meter = meter
        self.first_effective_from = first_effective_from
        who = f"customer {customer_id!r}, " if customer_id is not None else ""
        what = f"meter {meter!r}, " if meter is not None else ""
        first = (
            f"; its first version is effective from {first_effective_from.isoformat()}"
            if first_effective_from is not None
            else ""
        )
        super().__init__(
            f"no price version in force for {who}{what}at {instant.isoformat()}: "
            f"price book {price_book_id!r} has no version effective at or before that instant{first}"
        )


class MeterNotPricedError(PricingError, LookupError):
    """The version in force has no price for the meter. Never priced as zero."""

    def __init__(
        self,
        *,
        price_book_id: str,
        version: str,
        meter: str,
        customer_id: str | None = None,
        instant: datetime | None = None,
    ) -> None:
        self.price_book_id = price_book_id
        self.version = version
        self.meter = meter
        self.customer_id = customer_id
        self.instant = instant
        who = f" for customer {customer_id!r}" if customer_id is not None else ""
        at = f" at {instant.isoformat()}" if instant is not None else ""
        super().__init__(
            f"meter {meter!r} has no price{who}{at}: price book {price_book_id!r} "
            f"version {version!r} does not list it"
        )


class CustomerNotPricedError(PricingError, LookupError):
    """A customer has no price book (unknown customer or no price_book_id). Never priced as zero."""

    def __init__(self, customer_id: str, detail: str = "customer is unknown or has no price book") -> None:
        self.customer_id = customer_id
        super().__init__(f"customer {customer_id!r} cannot be priced: {detail}")
