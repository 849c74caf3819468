"""Golden credit notes on credit-funded invoices (docs/INVOICING.md "Credit notes"): a decrease
first gives back the credit the period's documents consumed; tax is refunded only on what was not
paid by credit, and never more than the period's documents charged.

Every case: a volume-priced meter (all units at 0.10 up to 1,000, all at 0.08 above), 1,000 units
invoiced and issued (100.00), then one late unit: 1,001 × 0.08 = 80.08, a −19.92 credit note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from jobs.batch.invoicing import run_invoicing
from sinks.db import connect
from tests.integration.dbutil import (
    add_usage,
    fresh_database,
    seed_credit,
    seed_customer,
    seed_price_book,
    seed_tax_rate,
    volume,
)

pytestmark = pytest.mark.integration

D = Decimal
JAN = datetime(2026, 1, 1, tzinfo=UTC)
W = JAN + timedelta(days=4, hours=10)
PRICE = volume((1000, "0.10"), (None, "0.08"))


@dataclass
class Case:
    credits: list[str] = field(default_factory=list)  # granted in this order
    tax: str | None = None
    tax_after: str | None = None  # a rate in force from mid-period, loaded after the invoice
    # expected (credits_applied, tax, total) of the standard invoice and of the credit note
    standard: tuple[str, str, str] = ("0", "0", "100.00")
    credit_note: tuple[str, str, str] = ("0", "0", "-19.92")
    remaining: list[str] | None = None  # per credit, after the credit note


CASES = {
    "fully credit-funded, no tax": Case(
        ["150"], standard=("100.00", "0", "0"), credit_note=("-19.92", "0", "0"), remaining=["69.92"]),
    # the issue-19 bug: the credit note refunded 3.98 of tax never charged, kept the credit
    "fully credit-funded, with tax": Case(
        ["150"], tax="0.2", standard=("100.00", "0", "0"), credit_note=("-19.92", "0", "0"),
        remaining=["69.92"]),
    # 10 of credit given back, tax refunded on the other 9.92 only (20 % of 9.92 = 1.984)
    "partly credit-funded, with tax": Case(
        ["10"], tax="0.2", standard=("10.00", "18.00", "108.00"),
        credit_note=("-10.00", "-1.98", "-11.90"), remaining=["10.00"]),
    "partly credit-funded, no tax": Case(
        ["10"], standard=("10.00", "0", "90.00"), credit_note=("-10.00", "0", "-9.92"),
        remaining=["10.00"]),
    "no credit, with tax": Case(
        tax="0.2", standard=("0", "20.00", "120.00"), credit_note=("0", "-3.98", "-23.90")),
    # a rate raised after the invoice: no tax was charged, none is refunded
    "tax refunded only as far as charged": Case(
        tax="0", tax_after="0.2", standard=("0", "0", "100.00"), credit_note=("0", "0", "-19.92")),
    # two credits consumed in grant order (60 then 30); the one consumed last is given back first
    "two credits, the last consumed given back first": Case(
        ["60", "30"], tax="0.2", standard=("90.00", "2.00", "12.00"),
        credit_note=("-19.92", "0", "0"), remaining=["0", "19.92"]),
}


@pytest.fixture(scope="module")
def settings():
    with fresh_database() as s:
        yield s


@pytest.mark.parametrize("name", list(CASES))
def test_credit_note_of_a_credit_funded_invoice(settings, name):
    case = CASES[name]
    cust = "cn-" + name.replace(" ", "-").replace(",", "")[:40]
    pb = "pb-" + cust
    region = f"R-{cust}" if case.tax is not None else None
    with connect(settings, autocommit=True) as conn:
        seed_price_book(conn, pb, "EUR")
        seed_customer(conn, cust, pb, "EUR", region)
        if region:
            seed_tax_rate(conn, region, case.tax, datetime(2025, 7, 1, tzinfo=UTC))
        for i, amount in enumerate(case.credits):
            seed_credit(conn, f"{cust}-cr{i}", cust, "EUR", amount, JAN - timedelta(days=10 - i))
        add_usage(conn, cust, "seats", W, [1000], PRICE, currency="EUR", price_book_id=pb)
        run_invoicing(conn, "2026-01", [cust], issue=True)
        if case.tax_after:
            seed_tax_rate(conn, region, case.tax_after, JAN + timedelta(days=14))
        add_usage(conn, cust, "seats", W, [1], PRICE, currency="EUR", price_book_id=pb)
        run_invoicing(conn, "2026-01", [cust], issue=True)

        docs = conn.execute(
            """SELECT kind, subtotal, credits_applied, tax, total FROM billing.invoices
                WHERE customer_id = %s ORDER BY invoice_id""", (cust,)).fetchall()
        assert [d[0] for d in docs] == ["standard", "credit_note"]
        (_, s_sub, *s_rest), (_, c_sub, *c_rest) = docs
        assert s_sub == D("100.00") and c_sub == D("-19.92")
        assert tuple(s_rest) == tuple(D(v) for v in case.standard)
        assert tuple(c_rest) == tuple(D(v) for v in case.credit_note)
        # the period as a whole: never a negative tax, never more credit than the net subtotal
        net_sub, net_credit, net_tax = (sum(d[i] for d in docs) for i in (1, 2, 3))
        assert net_tax >= 0 and 0 <= net_credit <= net_sub
        # each credit's applications (negative ones give credit back) add up to what it lost
        apps = conn.execute(
            """SELECT a.credit_id, sum(a.amount) FROM billing.credit_applications a
                 JOIN billing.credits cr USING (credit_id) WHERE cr.customer_id = %s
                GROUP BY 1""", (cust,)).fetchall()
        assert sum((v for _, v in apps), D(0)) == net_credit
        if case.remaining is not None:
            remaining = [r[0] for r in conn.execute(
                """SELECT remaining FROM billing.v_credit_balances WHERE customer_id = %s
                    ORDER BY granted_at""", (cust,))]
            assert remaining == [D(v) for v in case.remaining]
