"""billing.status: the lifecycle rules as a table (docs/INVOICING.md, "Lifecycle")."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from billing.status import (
    Document,
    Fact,
    FactKind,
    Status,
    absorb_credit_notes,
    balance_before_credit_notes,
    document_state,
)

D = Decimal
DUE = date(2026, 3, 3)
BEFORE, ON, AFTER = date(2026, 3, 1), DUE, date(2026, 3, 4)
SENT = Fact(FactKind.SENT, date(2026, 2, 2))


def pay(amount: str, on: date = date(2026, 2, 10)) -> Fact:
    return Fact(FactKind.PAYMENT, on, D(amount))


CASES = [
    # (name, kind, total, facts, credited, as_of, status, open)
    ("fresh", "standard", "100.00", (), "0", BEFORE, Status.ISSUED, "100.00"),
    ("sent", "standard", "100.00", (SENT,), "0", BEFORE, Status.SENT, "100.00"),
    ("sent, due today is not overdue", "standard", "100.00", (SENT,), "0", ON, Status.SENT, "100.00"),
    ("sent, a day late", "standard", "100.00", (SENT,), "0", AFTER, Status.OVERDUE, "100.00"),
    ("partly paid", "standard", "100.00", (SENT, pay("30")), "0", BEFORE,
     Status.PARTIALLY_PAID, "70.00"),
    ("partly paid and late", "standard", "100.00", (pay("30"),), "0", AFTER, Status.OVERDUE, "70.00"),
    ("paid in two", "standard", "100.00", (pay("30"), pay("70")), "0", AFTER, Status.PAID, "0.00"),
    ("payment after as_of does not count", "standard", "100.00",
     (pay("100", date(2026, 3, 2)),), "0", date(2026, 3, 1), Status.ISSUED, "100.00"),
    ("credit note absorbed in part", "standard", "100.00", (), "40", BEFORE,
     Status.PARTIALLY_PAID, "60.00"),
    ("credit note covers the rest", "standard", "100.00", (pay("60"),), "40", AFTER,
     Status.PAID, "0.00"),
    ("voided (its credit note absorbed the open amount)", "standard", "100.00",
     (pay("25"), Fact(FactKind.VOID, date(2026, 2, 20))), "75", AFTER, Status.VOID, "0.00"),
    ("written off", "standard", "100.00",
     (pay("10"), Fact(FactKind.WRITE_OFF, date(2026, 6, 1), D("90"))), "0", date(2026, 6, 2),
     Status.WRITTEN_OFF, "0.00"),
    ("zero correction is paid", "correction", "0.00", (), "0", AFTER, Status.PAID, "0.00"),
    ("correction overdue", "correction", "12.34", (), "0", AFTER, Status.OVERDUE, "12.34"),
    ("credit note fully absorbed", "credit_note", "-20.00", (), "20", AFTER, Status.PAID, "0.00"),
    ("credit note owed back, never overdue", "credit_note", "-20.00", (), "5", AFTER,
     Status.PARTIALLY_PAID, "-15.00"),
    ("credit note not absorbed, not refunded", "credit_note", "-20.00", (SENT,), "0", AFTER,
     Status.SENT, "-20.00"),
    ("credit note refunded", "credit_note", "-20.00",
     (Fact(FactKind.REFUND, date(2026, 2, 20), D("15")),), "5", AFTER, Status.PAID, "0.00"),
    ("JPY", "standard", "1000", (pay("999"),), "0", BEFORE, Status.PARTIALLY_PAID, "1"),
]


@pytest.mark.parametrize(("name", "kind", "total", "facts", "credited", "as_of", "status", "open_"),
                         CASES, ids=[c[0] for c in CASES])
def test_status_table(name, kind, total, facts, credited, as_of, status, open_):
    st = document_state(Document(kind, D(total), DUE, tuple(facts), D(credited)), as_of)
    assert (st.status, st.open_amount) == (status, D(open_))
    assert isinstance(st.open_amount, Decimal)


def test_days_overdue_only_while_open():
    doc = Document("standard", D("10"), DUE, ())
    assert document_state(doc, date(2026, 4, 2)).days_overdue == 30
    assert document_state(doc, DUE).days_overdue == 0
    paid = Document("standard", D("10"), DUE, (pay("10"),))
    assert document_state(paid, date(2026, 4, 2)).days_overdue == 0


@pytest.mark.parametrize(("balance", "credits", "absorbed"), [
    ("100", ["30", "50"], ["30", "50"]),
    ("60", ["30", "50"], ["30", "30"]),
    ("0", ["30"], ["0"]),
    ("-5", ["30"], ["0"]),
    ("100", [], []),
])
def test_credit_notes_are_absorbed_in_order(balance, credits, absorbed):
    assert absorb_credit_notes(D(balance), [D(c) for c in credits]) == [D(a) for a in absorbed]


def test_balance_before_credit_notes():
    facts = (pay("30"), Fact(FactKind.WRITE_OFF, date(2026, 5, 1), D("20")), pay("99", date(2027, 1, 1)))
    assert balance_before_credit_notes(D("100"), facts, date(2026, 6, 1)) == D("50")
    assert balance_before_credit_notes(D("10"), (pay("30"),), date(2026, 6, 1)) == D("0")
