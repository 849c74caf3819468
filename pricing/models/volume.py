"""`volume`: all units at the price of the tier the total falls in.

Same tier shape as `tiered`. Q falls in tier i when ``up_to[i-1] < Q <= up_to[i]`` (Q = 0 is in the
first tier). P(Q) = Q × unit_price_i. P is not monotone: crossing a tier edge can lower the amount.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from pricing.models.base import Line, PriceResult, check_quantity
from pricing.money import CTX, ZERO


class VolumeModel:
    kind = "volume"
    __slots__ = ("tiers", "_bounds")

    def __init__(self, tiers: Sequence[tuple[Decimal | None, Decimal]]) -> None:
        self.tiers = tuple(tiers)
        bounds = []
        lo = ZERO
        for up_to, price in self.tiers:
            bounds.append((lo, up_to, price))
            if up_to is not None:
                lo = up_to
        self._bounds = tuple(bounds)

    def _tier_index(self, quantity: Decimal) -> int:
        for i, (_lo, hi, _price) in enumerate(self._bounds):
            if hi is None or quantity <= hi:
                return i
        raise AssertionError("the last tier is open-ended")  # pragma: no cover

    def amount(self, quantity: Decimal) -> Decimal:
        check_quantity(quantity)
        return self.raw_amount(quantity)

    def raw_amount(self, quantity: Decimal) -> Decimal:
        for _lo, hi, price in self._bounds:
            if hi is None or quantity <= hi:
                return CTX.multiply(quantity, price)
        raise AssertionError("the last tier is open-ended")  # pragma: no cover

    def breakdown(self, quantity: Decimal) -> PriceResult:
        check_quantity(quantity)
        k = self._tier_index(quantity)
        lines = []
        total = ZERO
        for i, (lo, hi, price) in enumerate(self._bounds):
            units = quantity if i == k else ZERO
            amt = CTX.multiply(units, price)
            total = CTX.add(total, amt)
            lines.append(Line(i + 1, lo, hi, units, price, amt))
        return PriceResult(quantity, total, tuple(lines))
