"""Quotes for people: what Q units in one billing period cost, tier by tier."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pricing.book import PriceBook, PriceVersion
from pricing.errors import MeterNotPricedError
from pricing.models import PriceResult
from pricing.money import RoundedAmount, dstr, round_money, to_decimal
from pricing.periods import ensure_utc, isoformat_utc


@dataclass(frozen=True, slots=True)
class Quote:
    price_book_id: str
    currency: str
    version: PriceVersion
    meter: str
    model: str
    quantity: Decimal
    result: PriceResult
    rounded: RoundedAmount
    at: datetime | None

    @property
    def amount(self) -> Decimal:
        """Unrounded amount."""
        return self.result.amount

    def to_json(self) -> dict[str, Any]:
        return {
            "price_book_id": self.price_book_id,
            "currency": self.currency,
            "price_version": self.version.name,
            "effective_from": isoformat_utc(self.version.effective_from),
            "at": None if self.at is None else isoformat_utc(self.at),
            "meter": self.meter,
            "model": self.model,
            "quantity": dstr(self.quantity),
            "amount": dstr(self.result.amount),
            "amount_rounded": dstr(self.rounded.rounded),
            "rounding_mode": self.rounded.rounding_mode,
            "tiers": [ln.to_json() for ln in self.result.lines],
        }

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False)

    def render_text(self) -> str:
        at = "latest version" if self.at is None else f"in force at {isoformat_utc(self.at)}"
        out = [
            f"Price book {self.price_book_id} ({self.currency}), version {self.version.name} "
            f"(effective from {isoformat_utc(self.version.effective_from)}; {at})",
            f"Meter {self.meter}: {dstr(self.quantity)} units in one billing period, model {self.model}",
            "",
        ]
        rows = [("tier", "from", "to", "units", "unit price", "amount")]
        for ln in self.result.lines:
            price = dstr(ln.unit_price)
            units = dstr(ln.units)
            if ln.packages is not None:
                assert ln.package_size is not None  # a package line carries both
                units = f"{units} ({dstr(ln.packages)} × {dstr(ln.package_size)})"
                price = f"{price}/package"
            rows.append(
                (str(ln.tier), dstr(ln.from_), "∞" if ln.to is None else dstr(ln.to), units, price,
                 dstr(ln.amount))
            )
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            out.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        out.append("")
        out.append(f"Amount (unrounded): {dstr(self.result.amount)} {self.currency}")
        out.append(
            f"Amount ({self.rounded.rounding_mode}, {self.rounded.minor_units} decimals): "
            f"{dstr(self.rounded.rounded)} {self.currency}"
        )
        return "\n".join(out)


def quote(book: PriceBook, meter: str, quantity: object, at: datetime | None = None) -> Quote:
    """Price ``quantity`` units of ``meter`` in one billing period under the version in force at
    ``at`` (default: the latest version). Raises if no version is in force or the meter is not
    priced there."""
    q = to_decimal(quantity, "quantity")
    if q < 0:
        raise ValueError(f"quantity must be >= 0, got {q}")
    if at is None:
        ver = book.latest
    else:
        at = ensure_utc(at, "at")
        ver = book.version_at(at, meter=meter)
    model = ver.model_for(meter)
    if model is None:
        raise MeterNotPricedError(
            price_book_id=book.price_book_id, version=ver.name, meter=meter, instant=at
        )
    result = model.breakdown(q)
    rounded = round_money(result.amount, book.currency, ver.rounding_mode)
    return Quote(book.price_book_id, book.currency, ver, meter, model.kind, q, result, rounded, at)
