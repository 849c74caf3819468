"""The credit-note rule as a pure function agrees with the golden cases the invoice job's SQL is
pinned to (tests/integration/test_invoicing_credit_notes.py): one rule, two implementations."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.credit_notes import credit_note
from tests.integration.test_invoicing_credit_notes import CASES

D = Decimal


@pytest.mark.parametrize("name", list(CASES))
def test_the_rule_gives_the_golden_credit_notes(name: str) -> None:
    case = CASES[name]
    credits, tax, _ = (D(v) for v in case.standard)
    rate = D(case.tax_after or case.tax or "0")  # the rate in force when the credit note is built
    cn = credit_note(D("-19.92"), credits_consumed=credits, tax_charged=tax, tax_rate=rate, currency="EUR")
    assert (cn.credits_applied, cn.tax, cn.total) == tuple(D(v) for v in case.credit_note)


def test_a_credit_note_never_refunds_more_than_was_charged() -> None:
    for consumed in ("0", "5", "50"):
        for charged in ("0", "1", "100"):
            cn = credit_note(D("-30"), credits_consumed=D(consumed), tax_charged=D(charged),
                             tax_rate=D("0.25"), currency="USD")
            assert D(consumed) + cn.credits_applied >= 0 and D(charged) + cn.tax >= 0
            assert cn.total == cn.subtotal - cn.credits_applied + cn.tax


def test_only_decreases_are_credit_notes() -> None:
    with pytest.raises(ValueError):
        credit_note(D("1"), credits_consumed=D(0), tax_charged=D(0), tax_rate=D(0), currency="USD")
