"""Shared types of the pricing models.

A pricing model is a pure function of a cumulative quantity ``Q`` (over a billing period):
``amount(Q)`` returns the UNROUNDED amount, ``breakdown(Q)`` the same amount split into lines
(one per tier; ``from``/``to`` are the tier's bounds: a unit ``u`` is in the tier when
``from < u <= to``, ``to = None`` is open-ended).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from pricing.money import CTX, ZERO, dstr


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a breakdown (or of the difference of two breakdowns)."""

    tier: int  # 1-based tier number (1 for flat and package)
    from_: Decimal
    to: Decimal | None
    units: Decimal
    unit_price: Decimal  # price per unit; for `package`, the price per package
    amount: Decimal
    packages: Decimal | None = None  # `package` only: number of (started) packages
    package_size: Decimal | None = None  # `package` only

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {
            "tier": self.tier,
            "from": dstr(self.from_),
            "to": None if self.to is None else dstr(self.to),
            "units": dstr(self.units),
            "unit_price": dstr(self.unit_price),
            "amount": dstr(self.amount),
        }
        if self.packages is not None:
            assert self.package_size is not None  # a package line carries both
            d["packages"] = dstr(self.packages)
            d["package_size"] = dstr(self.package_size)
        return d


@dataclass(frozen=True, slots=True)
class PriceResult:
    quantity: Decimal
    amount: Decimal  # unrounded
    lines: tuple[Line, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "quantity": dstr(self.quantity),
            "amount": dstr(self.amount),
            "tiers": [ln.to_json() for ln in self.lines],
        }


class PriceModel(Protocol):
    kind: str

    def amount(self, quantity: Decimal) -> Decimal:
        """Unrounded amount for a cumulative quantity (fast, no breakdown)."""
        ...

    def raw_amount(self, quantity: Decimal) -> Decimal:
        """``amount`` without input checks: ``quantity`` must already be a finite Decimal >= 0
        (the rater validates each input once)."""
        ...

    def breakdown(self, quantity: Decimal) -> PriceResult:
        """Amount plus one line per tier (every tier listed, untouched tiers with 0 units)."""
        ...


def diff_lines(after: PriceResult, before: PriceResult) -> list[Line]:
    """Per-tier difference ``after - before`` (lines whose units and amount are both unchanged are
    left out). Sums to ``after.amount - before.amount``: this is what an increment of quantity
    costs, tier by tier (a volume tier crossing shows as a negative line for the old tier)."""
    out: list[Line] = []
    for a, b in zip(after.lines, before.lines, strict=True):
        du = CTX.subtract(a.units, b.units)
        da = CTX.subtract(a.amount, b.amount)
        dp = None
        if a.packages is not None and b.packages is not None:
            dp = CTX.subtract(a.packages, b.packages)
        if du.is_zero() and da.is_zero() and (dp is None or dp.is_zero()):
            continue
        out.append(
            Line(a.tier, a.from_, a.to, du, a.unit_price, da, dp, a.package_size)
        )
    return out


def delta_lines(model: PriceModel, before: Decimal, after: Decimal) -> list[Line]:
    """Per-tier lines of ``P(after) − P(before)`` (a model may provide a faster equivalent)."""
    fast = getattr(model, "delta_lines", None)
    if fast is not None:
        lines: list[Line] = fast(before, after)
        return lines
    return diff_lines(model.breakdown(after), model.breakdown(before))


def check_quantity(q: Decimal) -> None:
    if type(q) is not Decimal:
        if isinstance(q, float):
            raise TypeError(f"quantity {q!r} is a float; money code takes Decimal only")
        raise TypeError(f"quantity must be a Decimal, got {type(q).__name__}")
    if q < ZERO or not q.is_finite():
        raise ValueError(f"quantity must be finite and >= 0, got {q}")
