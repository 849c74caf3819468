"""The credit-note rule (issue 19), as a pure function: what a credit note gives back in credit,
refunds in tax and owes in total. ``jobs/batch/invoicing.py`` applies it set-based in SQL;
``tests/unit/test_credit_notes.py`` pins this function and the SQL to the same golden cases.

A credit note lowers what a period's documents billed (``subtotal < 0``). It first **restores the
credit the period's issued documents consumed** (net of earlier credit notes), up to its own
amount: credit that paid for usage that is no longer billed goes back to the customer's credits,
not out as money. Only the rest is refunded in money, with tax on that rest at the rate in force,
and **never more tax than the period's documents charged** (net): a document paid by credit
charged no tax on it, so none is refunded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pricing.money import round_money

TAX_ROUNDING_MODE = "ROUND_HALF_UP"


@dataclass(frozen=True)
class CreditNote:
    subtotal: Decimal          # < 0: the decrease
    credits_applied: Decimal   # ≤ 0: credit given back
    tax: Decimal               # ≤ 0: tax refunded
    total: Decimal             # subtotal − credits_applied + tax


def credit_note(subtotal: Decimal, *, credits_consumed: Decimal, tax_charged: Decimal,
                tax_rate: Decimal, currency: str) -> CreditNote:
    """``credits_consumed``/``tax_charged``: Σ credits_applied / Σ tax of the period's issued
    documents for the customer (net, so earlier credit notes are accounted for)."""
    if subtotal >= 0:
        raise ValueError("a credit note has a negative subtotal")
    restored = min(-subtotal, max(credits_consumed, Decimal(0)))
    credits_applied = -restored
    tax = round_money((subtotal - credits_applied) * tax_rate, currency, TAX_ROUNDING_MODE).rounded
    tax = max(tax, -max(tax_charged, Decimal(0)))
    return CreditNote(subtotal, credits_applied, tax, subtotal - credits_applied + tax)
