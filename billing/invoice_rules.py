"""The invoice rules of docs/INVOICING.md as a small pure model: what one invoice run's document for
one customer and period says, given its charges, what was issued before, the credits and the tax.

``jobs/batch/invoicing.py`` applies the same rules in set-based SQL, for speed; this model is the
readable statement of them, unit-tested on worked examples (tests/unit/test_invoice_rules.py) and
checked against the SQL on random cases (tests/integration/test_invoice_rules_vs_sql.py), to the
cent. The rules:

* **line** (one per meter): ``round(Σ charges of (customer, meter, period) invoiced so far,
  including this document's) − Σ amounts of the issued lines before it``, rounded once to the
  currency's minor unit with the price book's rounding mode — so Σ of all documents' lines equals
  the period's charges rounded once, however many corrections follow;
* **kind**: ``standard`` while no standard invoice of the period is issued, then ``correction``
  (subtotal ≥ 0) or ``credit_note`` (subtotal < 0);
* **credits**: in ``(granted_at, credit_id)`` order, each up to what is left of the subtotal, in
  whole minor units (a credit's remainder is truncated); only credits in the invoice's currency
  granted before the period's end; a non-positive subtotal consumes none. A **credit note** first
  gives back the credit the period's issued documents consumed (net), up to its own amount, the
  credit granted last given back first (negative applications; ``billing/credit_notes.py``);
* **tax**: the rate in force at the period's end (latest ``effective_from`` before it) on the
  subtotal after credits, rounded ``ROUND_HALF_UP`` to the minor unit; no region, no tax; a
  credit note refunds no more tax than the period's issued documents charged (net);
* **total** = subtotal − credits applied + tax.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pricing.money import ROUNDING_CTX, minor_units, validate_rounding_mode

TAX_ROUNDING_MODE = decimal.ROUND_HALF_UP
ZERO = Decimal(0)


class DocumentKind(StrEnum):
    STANDARD = "standard"
    CORRECTION = "correction"
    CREDIT_NOTE = "credit_note"


@dataclass(frozen=True)
class Issued:
    """What the issued documents of the period already say for one meter."""

    amount_precise: Decimal = ZERO  # Σ of their lines' unrounded amounts (= Σ charges they hold)
    amount: Decimal = ZERO  # Σ of their lines' rounded amounts


@dataclass(frozen=True)
class Credit:
    credit_id: str
    currency: str
    granted_at: datetime
    amount: Decimal
    applied: Decimal = ZERO  # already applied by other documents (issued, or drafts holding it)


@dataclass(frozen=True)
class Line:
    meter: str
    amount_precise: Decimal  # Σ of this document's charges of the meter
    amount: Decimal


@dataclass(frozen=True)
class Document:
    kind: DocumentKind
    currency: str
    lines: tuple[Line, ...]
    subtotal: Decimal
    credits: tuple[tuple[str, Decimal], ...]  # (credit_id, amount applied), in application order
    tax_rate: Decimal
    tax: Decimal
    total: Decimal

    @property
    def credits_applied(self) -> Decimal:
        return sum((a for _, a in self.credits), ZERO)


def quantize(amount: Decimal, scale: int, mode: str) -> Decimal:
    """``amount`` rounded to ``scale`` decimals with ``mode``; never ``-0``."""
    q = amount.quantize(
        Decimal(1).scaleb(-scale, ROUNDING_CTX),
        rounding=validate_rounding_mode(mode),
        context=ROUNDING_CTX,
    )
    return q.copy_abs() if q.is_zero() else q


def in_force(by_effective_from: Mapping[datetime, object], period_end: datetime) -> object | None:
    """The value whose ``effective_from`` is the latest strictly before ``period_end`` (a price
    book version's rounding mode, a region's tax rate), or None."""
    before = [t for t in by_effective_from if t < period_end]
    return by_effective_from[max(before)] if before else None


def line_amount(
    charges: Sequence[Decimal], issued: Issued, scale: int, rounding_mode: str
) -> Decimal:
    """``round(Σ issued precise + Σ charges) − Σ issued rounded`` (one rounding per period)."""
    return (
        quantize(issued.amount_precise + sum(charges, ZERO), scale, rounding_mode) - issued.amount
    )


def document_kind(standard_issued: bool, subtotal: Decimal) -> DocumentKind:
    if not standard_issued:
        return DocumentKind.STANDARD
    return DocumentKind.CREDIT_NOTE if subtotal < 0 else DocumentKind.CORRECTION


def apply_credits(
    subtotal: Decimal, credits: Sequence[Credit], *, currency: str, scale: int, period_end: datetime
) -> list[tuple[str, Decimal]]:
    """The credits this document consumes, in ``(granted_at, credit_id)`` order."""
    if subtotal <= 0:
        return []
    out: list[tuple[str, Decimal]] = []
    left = subtotal
    usable = (c for c in credits if c.currency == currency and c.granted_at < period_end)
    for c in sorted(usable, key=lambda c: (c.granted_at, c.credit_id)):
        remaining = quantize(c.amount - c.applied, scale, decimal.ROUND_DOWN)
        if remaining <= 0:
            continue
        if left <= 0:
            break
        take = min(remaining, left)
        out.append((c.credit_id, take))
        left -= take
    return out


def give_back_credits(
    subtotal: Decimal, credits: Sequence[Credit], consumed_in_period: Mapping[str, Decimal]
) -> list[tuple[str, Decimal]]:
    """A credit note's negative applications: what the period's issued documents consumed of each
    credit (net), given back up to the note's own amount, the credit granted last first."""
    net = sum(consumed_in_period.values(), ZERO)
    if subtotal >= 0 or net <= 0:
        return []
    left = min(-subtotal, net)
    out: list[tuple[str, Decimal]] = []
    by_id = {c.credit_id: c for c in credits}
    held = [(by_id[cid].granted_at, cid, a) for cid, a in consumed_in_period.items() if a > 0]
    for _at, cid, a in sorted(held, reverse=True):
        if left <= 0:
            break
        back = min(a, left)
        out.append((cid, -back))
        left -= back
    return out


def tax_of(base: Decimal, rate: Decimal | None, scale: int) -> Decimal:
    return ZERO if rate is None else quantize(base * rate, scale, TAX_ROUNDING_MODE)


def build_document(
    charges: Mapping[str, Sequence[Decimal]],
    *,
    currency: str,
    period_end: datetime,
    rounding_mode: str | None,
    issued: Mapping[str, Issued] | None = None,
    standard_issued: bool = False,
    credits: Sequence[Credit] = (),
    tax_rate: Decimal | None = None,
    consumed_in_period: Mapping[str, Decimal] | None = None,
    tax_charged: Decimal = ZERO,
) -> Document:
    """The document an invoice run builds for one customer: ``charges`` per meter are those no
    document links yet (plus those of the draft it rebuilds); ``issued`` per meter what the
    issued documents of the period hold; ``rounding_mode`` that of the price book version in
    force at the period's end (None: ``ROUND_HALF_UP``); ``tax_rate`` None when the customer has
    no tax region; ``consumed_in_period`` per credit what the period's issued documents applied
    (net) and ``tax_charged`` the tax they charged (net): what a credit note gives back."""
    scale = minor_units(currency)
    mode = rounding_mode or decimal.ROUND_HALF_UP
    issued = issued or {}
    lines = tuple(
        Line(
            m, sum(charges[m], ZERO), line_amount(charges[m], issued.get(m, Issued()), scale, mode)
        )
        for m in sorted(charges)
    )
    subtotal = sum((ln.amount for ln in lines), ZERO)
    kind = document_kind(standard_issued, subtotal)
    if kind is DocumentKind.CREDIT_NOTE:
        applied = give_back_credits(subtotal, credits, consumed_in_period or {})
    else:
        applied = apply_credits(subtotal, credits, currency=currency, scale=scale, period_end=period_end)
    after = subtotal - sum((a for _, a in applied), ZERO)
    tax = tax_of(after, tax_rate, scale)
    if kind is DocumentKind.CREDIT_NOTE:
        tax = max(tax, -max(tax_charged, ZERO))
    return Document(
        kind,
        currency,
        lines,
        subtotal,
        tuple(applied),
        tax_rate if tax_rate is not None else ZERO,
        tax,
        after + tax,
    )
