"""The SQL invoice job (jobs/batch/invoicing.py) against the pure model of the invoice rules
(billing/invoice_rules.py) on random small cases, on a real PostgreSQL: charges in rounds (each
round an invoice run, issued or left as a draft that the next round rebuilds), prior issued
documents, credits (some in another currency or granted after the period), tax regions and price
book versions whose rounding modes change over time. Every document the SQL writes must equal the
model's to the cent: kind, lines, credits applied (which and how much), tax, total."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from billing.invoice_rules import Credit, Issued, build_document, in_force
from jobs.batch.invoicing import run_invoicing
from pricing.book import price_book_from_data
from pricing.reference import Customer, TaxRate
from sinks.db import connect
from sinks.pricebook_store import store_customers, store_price_books, store_tax_rates

pytestmark = [pytest.mark.integration, pytest.mark.module_database]

D = Decimal
JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MODES = [
    "ROUND_HALF_UP",
    "ROUND_HALF_EVEN",
    "ROUND_HALF_DOWN",
    "ROUND_UP",
    "ROUND_DOWN",
    "ROUND_CEILING",
    "ROUND_FLOOR",
    "ROUND_05UP",
]
CURRENCIES = ["USD", "JPY", "KWD"]
# price book versions per book: (effective_from, rounding mode); the one in force at the end of
# January decides (a version from February on must not)
VERSIONS = {
    "early": [(datetime(2020, 1, 1, tzinfo=UTC), "ROUND_HALF_EVEN")],
    "changed": [
        (datetime(2020, 1, 1, tzinfo=UTC), "ROUND_DOWN"),
        (datetime(2026, 1, 20, tzinfo=UTC), "ROUND_UP"),
        (FEB, "ROUND_FLOOR"),
    ],
}
TAX = {
    "R-DE": {
        datetime(2025, 1, 1, tzinfo=UTC): D("0.19"),
        datetime(2026, 1, 15, tzinfo=UTC): D("0.0725"),
        FEB: D("0.5"),
    },
    "R-X": {datetime(2020, 1, 1, tzinfo=UTC): D("0.333333")},
}


def book_id(currency: str, mode_or_kind: str) -> str:
    return f"pb-{currency.lower()}-{mode_or_kind.lower()}"


def book_modes(bid_kind: str) -> dict[datetime, str]:
    return (
        dict(VERSIONS[bid_kind]) if bid_kind in VERSIONS else {JAN - timedelta(days=400): bid_kind}
    )


@pytest.fixture(scope="module")
def seed():
    """Seeds the one database the module's tests share: a price book per (currency, rounding mode
    or history of modes) and the tax rates, through the real stores."""

    def seed(conn) -> None:
        books = []
        for cur in CURRENCIES:
            for kind in [*MODES, *VERSIONS]:
                books.append(
                    price_book_from_data(
                        {
                            "price_book_id": book_id(cur, kind),
                            "currency": cur,
                            "versions": [
                                {
                                    "name": f"v{i}",
                                    "effective_from": t.isoformat(),
                                    "rounding_mode": m,
                                    "prices": [
                                        {"meter": "api_calls", "model": "flat", "unit_price": "1"}
                                    ],
                                }
                                for i, (t, m) in enumerate(sorted(book_modes(kind).items()))
                            ],
                        }
                    )
                )
        store_price_books(conn, books)
        store_tax_rates(
            conn,
            [
                TaxRate(region=r, effective_from=t, rate=v)
                for r, rates in TAX.items()
                for t, v in rates.items()
            ],
        )

    return seed


amounts = st.one_of(
    st.integers(-2_000, 60_000).map(lambda n: D(n).scaleb(-3)),  # many half-cent ties
    st.decimals(
        min_value=D("-20"), max_value=D("300"), places=6, allow_nan=False, allow_infinity=False
    ),
)
rounds = st.lists(
    st.tuples(
        st.dictionaries(
            st.sampled_from(["api_calls", "seats", "storage"]),
            st.lists(amounts, min_size=1, max_size=4),
            min_size=1,
            max_size=3,
        ),
        st.booleans(),  # issue this round's document?
        st.booleans(),  # credit back: negate this round's charges (credit notes)
    ),
    min_size=1,
    max_size=4,
)
credits = st.lists(
    st.tuples(
        st.decimals(min_value=D("0.000001"), max_value=D("400"), places=6),
        st.integers(0, 40),  # day of the grant from Jan 1 (31+: at or after the period end)
        st.booleans(),
    ),  # in another currency
    min_size=1,
    max_size=4,
)


@dataclass
class Case:
    currency: str
    book: str
    region: str | None


cases = st.builds(
    Case,
    st.sampled_from(CURRENCIES),
    st.sampled_from([*MODES, *VERSIONS]),
    st.sampled_from([None, "R-DE", "R-X"]),
)
_customers = itertools.count()


def add_charges(
    conn, customer: str, currency: str, book: str, charges: dict[str, list[Decimal]]
) -> None:
    rows = []
    for m, amts in charges.items():
        for a in amts:
            ws = JAN + timedelta(hours=len(rows) + 1)
            rows.append(
                (
                    uuid.uuid4(),
                    customer,
                    m,
                    JAN,
                    ws,
                    ws + timedelta(hours=1),
                    1,
                    currency,
                    D(1),
                    a,
                    book,
                    "v0",
                    json.dumps({"test": "invoice rules vs SQL"}),
                    "window_fired",
                )
            )
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO billing.rated_charges (charge_id, customer_id, meter, period_start,
                 window_start, window_end, revision, currency, quantity_delta, amount,
                 price_book_id, price_version, calculation, cause)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            rows,
        )


def latest_document(conn, customer: str) -> dict:
    inv = conn.execute(
        """SELECT invoice_id, kind, subtotal, credits_applied, tax_rate, tax, total, status
             FROM billing.invoices WHERE customer_id = %s ORDER BY invoice_id DESC LIMIT 1""",
        (customer,),
    ).fetchone()
    lines = {
        m: (p, a)
        for m, p, a in conn.execute(
            "SELECT meter, amount_precise, amount FROM billing.invoice_lines WHERE invoice_id = %s",
            (inv[0],),
        )
    }
    applied = dict(
        conn.execute(
            "SELECT credit_id, amount FROM billing.credit_applications WHERE invoice_id = %s",
            (inv[0],),
        ).fetchall()
    )
    return {
        "kind": inv[1],
        "subtotal": inv[2],
        "credits_applied": inv[3],
        "tax_rate": inv[4],
        "tax": inv[5],
        "total": inv[6],
        "status": inv[7],
        "lines": lines,
        "credits": applied,
    }


@hsettings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases, rounds=rounds, grants=credits)
def test_every_document_the_sql_writes_equals_the_models_to_the_cent(
    settings, case, rounds, grants
) -> None:
    customer = f"rules-{next(_customers)}"
    bid = book_id(case.currency, case.book)
    mode = in_force(book_modes(case.book), FEB)
    rate = in_force(TAX[case.region], FEB) if case.region else None
    with connect(settings, autocommit=True) as conn:
        store_customers(
            conn,
            [
                Customer(
                    customer_id=customer,
                    price_book_id=bid,
                    currency=case.currency,
                    tax_region=case.region,
                )
            ],
        )
        model_credits = []
        for i, (amount, day, foreign) in enumerate(grants):
            cur = "EUR" if foreign else case.currency
            at = (
                JAN + timedelta(days=day) if day < 35 else JAN + timedelta(days=day % 3)
            )  # ties too
            cid = f"cr-{customer}-{i:02d}"
            conn.execute(
                "INSERT INTO billing.credits"
                " (credit_id, customer_id, currency, amount, granted_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (cid, customer, cur, amount, at),
            )
            model_credits.append(Credit(cid, cur, at, amount))

        issued: dict[str, Issued] = {}
        applied: dict[str, Decimal] = defaultdict(Decimal)  # by issued documents
        standard_issued = False
        tax_charged = D(0)  # by issued documents
        pending: dict[str, list[Decimal]] = defaultdict(list)  # charges no issued document holds
        for charges, issue, credit_back in rounds:
            if credit_back:
                charges = {m: [-a for a in amts] for m, amts in charges.items()}
            event(
                f"document {len(issued) and 'after an issue' or 'first'}, credit back {credit_back}"
            )
            add_charges(conn, customer, case.currency, bid, charges)
            for m, amts in charges.items():
                pending[m].extend(amts)
            run_invoicing(conn, "2026-01", [customer], issue=issue)

            want = build_document(
                dict(pending),
                currency=case.currency,
                period_end=FEB,
                rounding_mode=str(mode),
                issued=issued,
                standard_issued=standard_issued,
                tax_rate=rate,
                credits=[
                    Credit(c.credit_id, c.currency, c.granted_at, c.amount, applied[c.credit_id])
                    for c in model_credits
                ],
                consumed_in_period=dict(applied),
                tax_charged=tax_charged,
            )
            got = latest_document(conn, customer)
            event(f"kind {got['kind']}, credits applied {bool(got['credits'])}")
            if got["kind"] == "credit_note" and any(applied.values()):
                event("a credit note after credits were applied: it gives credit back")
            assert got["kind"] == want.kind.value
            assert got["lines"] == {ln.meter: (ln.amount_precise, ln.amount) for ln in want.lines}
            assert got["subtotal"] == want.subtotal
            assert got["credits"] == dict(want.credits)
            assert got["credits_applied"] == want.credits_applied
            assert got["tax_rate"] == (rate if rate is not None else D(0))
            assert got["tax"] == want.tax
            assert got["total"] == want.total
            assert got["status"] == ("issued" if issue else "draft")
            if issue:
                for ln in want.lines:
                    before = issued.get(ln.meter, Issued())
                    issued[ln.meter] = Issued(
                        before.amount_precise + ln.amount_precise, before.amount + ln.amount
                    )
                for cid, a in want.credits:
                    applied[cid] += a
                tax_charged += want.tax
                standard_issued = True
                pending.clear()
        # Σ of every issued document's lines per meter = the period's issued charges rounded once
        for m, iss in issued.items():
            line_sum = conn.execute(
                """SELECT sum(l.amount) FROM billing.invoice_lines l
                     JOIN billing.invoices i USING (invoice_id)
                    WHERE i.customer_id = %s AND l.meter = %s AND i.status = 'issued'""",
                (customer, m),
            ).fetchone()[0]
            assert line_sum == iss.amount
