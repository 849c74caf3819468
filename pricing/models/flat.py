"""`flat`: every unit at ``unit_price``. P(Q) = Q × unit_price."""

from __future__ import annotations

from decimal import Decimal

from pricing.models.base import Line, PriceResult, check_quantity
from pricing.money import CTX, ZERO


class FlatModel:
    kind = "flat"
    __slots__ = ("unit_price",)

    def __init__(self, unit_price: Decimal) -> None:
        self.unit_price = unit_price

    def amount(self, quantity: Decimal) -> Decimal:
        check_quantity(quantity)
        return CTX.multiply(quantity, self.unit_price)

    def raw_amount(self, quantity: Decimal) -> Decimal:
        return CTX.multiply(quantity, self.unit_price)

    def breakdown(self, quantity: Decimal) -> PriceResult:
        amt = self.amount(quantity)
        return PriceResult(quantity, amt, (Line(1, ZERO, None, quantity, self.unit_price, amt),))
