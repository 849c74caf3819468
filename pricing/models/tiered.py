"""`tiered` (graduated): each tier prices only the units inside it.

Tiers are ``(up_to, unit_price)``, ``up_to`` strictly ascending, last one ``None`` (open-ended).
Tier i holds the units ``u`` with ``up_to[i-1] < u <= up_to[i]``.
P(Q) = Σ_i unit_price_i × |(from_i, to_i] ∩ (0, Q]|.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from pricing.models.base import Line, PriceResult, check_quantity
from pricing.money import CTX, ZERO


class TieredModel:
    kind = "tiered"
    __slots__ = ("tiers", "_bounds", "_base")

    def __init__(self, tiers: Sequence[tuple[Decimal | None, Decimal]]) -> None:
        self.tiers = tuple(tiers)
        lows: list[Decimal] = []
        bases: list[Decimal] = []
        lo = ZERO
        base = ZERO
        for up_to, price in self.tiers:
            lows.append(lo)
            bases.append(base)
            if up_to is not None:
                base = CTX.add(base, CTX.multiply(CTX.subtract(up_to, lo), price))
                lo = up_to
        # (from, to, unit_price, amount at `from`)
        self._bounds = tuple(
            (lows[i], self.tiers[i][0], self.tiers[i][1], bases[i]) for i in range(len(self.tiers))
        )
        self._base = bases

    def amount(self, quantity: Decimal) -> Decimal:
        check_quantity(quantity)
        return self.raw_amount(quantity)

    def raw_amount(self, quantity: Decimal) -> Decimal:
        for lo, hi, price, base in self._bounds:
            if hi is None or quantity <= hi:
                return CTX.add(base, CTX.multiply(CTX.subtract(quantity, lo), price))
        raise AssertionError("the last tier is open-ended")  # pragma: no cover

    def delta_lines(self, before: Decimal, after: Decimal) -> list[Line]:
        """Lines of P(after) − P(before), only tiers whose units change (same as diff_lines)."""
        lines = []
        for i, (lo, hi, price, _base) in enumerate(self._bounds, start=1):
            ta = after if hi is None or after < hi else hi
            tb = before if hi is None or before < hi else hi
            ua = CTX.subtract(ta, lo) if ta > lo else ZERO
            ub = CTX.subtract(tb, lo) if tb > lo else ZERO
            if ua != ub:
                du = CTX.subtract(ua, ub)
                lines.append(Line(i, lo, hi, du, price, CTX.multiply(du, price)))
        return lines

    def breakdown(self, quantity: Decimal) -> PriceResult:
        check_quantity(quantity)
        lines = []
        total = ZERO
        for i, (lo, hi, price, _base) in enumerate(self._bounds, start=1):
            top = quantity if hi is None else min(quantity, hi)
            units = CTX.subtract(top, lo) if top > lo else ZERO
            amt = CTX.multiply(units, price)
            total = CTX.add(total, amt)
            lines.append(Line(i, lo, hi, units, price, amt))
        return PriceResult(quantity, total, tuple(lines))
