"""Golden invoices: known usage in, exact invoice totals out (real PostgreSQL, no mocks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from jobs.batch.invoicing import run_invoicing
from sinks.db import connect
from tests.integration.dbutil import (
    PriceFn,
    add_usage,
    flat,
    seed_credit,
    seed_customer,
    seed_price_book,
    seed_tax_rate,
    tiered,
    volume,
)

pytestmark = [pytest.mark.integration, pytest.mark.module_database]

D = Decimal
JAN = datetime(2026, 1, 1, tzinfo=UTC)
W = JAN + timedelta(days=4, hours=10)  # first window of the usage


@dataclass
class Case:
    price: PriceFn
    windows: list[list[str | int]]      # events per consecutive hourly window
    currency: str = "USD"
    rounding_mode: str = "ROUND_HALF_UP"
    tax: str | None = None              # rate of the customer's region, in force before period end
    credits: list[str] = field(default_factory=list)
    # expected
    quantity: str = "0"
    line: str = "0"
    credits_applied: str = "0"
    tax_amount: str = "0"
    total: str = "0"
    remaining_credit: str | None = None


TIERED = tiered((1000, "0.10"), (None, "0.08"))
VOLUME = volume((1000, "0.10"), (None, "0.08"))

CASES = {
    # DESIGN.md seed example: 1,234 units flat at 0.08 -> 98.72, spread over three windows
    "flat seed example": Case(flat("0.08"), [[400], [500], [334]], quantity="1234", line="98.72",
                              total="98.72"),
    # graduated tiers: 1,000 x 0.10 + 234 x 0.08 = 118.72 (window deltas 40 + 50 + 28.72)
    "tiered seed example": Case(TIERED, [[400], [500], [334]], quantity="1234", line="118.72",
                                total="118.72"),
    # volume: all 1,234 units at 0.08 = 98.72 (the third window's delta is 8.72 after crossing)
    "volume seed example": Case(VOLUME, [[400], [500], [334]], quantity="1234", line="98.72",
                                total="98.72"),
    # tax 7.25 % on 118.72 = 8.6072 -> 8.61 (half-up), total 127.33
    "tiered with tax": Case(TIERED, [[400], [500], [334]], tax="0.0725", quantity="1234",
                            line="118.72", tax_amount="8.61", total="127.33"),
    # credit 150 > subtotal 98.72: applies 98.72, 51.28 carries over; tax 20 % on 0 is 0
    "credit larger than the subtotal carries over": Case(
        flat("0.08"), [[1234]], tax="0.20", credits=["150"], quantity="1234", line="98.72",
        credits_applied="98.72", tax_amount="0", total="0", remaining_credit="51.28"),
    # two credits smaller than the subtotal: both used up (80); tax 10 % on 18.72 = 1.872 -> 1.87
    "credits smaller than the subtotal are used up": Case(
        flat("0.08"), [[1234]], tax="0.10", credits=["30", "50"], quantity="1234", line="98.72",
        credits_applied="80", tax_amount="1.87", total="20.59", remaining_credit="0"),
    # grant order: 60 fully, then 38.72 of 100 (61.28 left); nothing left to tax
    "credits apply in grant order up to the subtotal": Case(
        flat("0.08"), [[1234]], tax="0.10", credits=["60", "100"], quantity="1234", line="98.72",
        credits_applied="98.72", tax_amount="0", total="0", remaining_credit="61.28"),
    # JPY has no minor unit: 1,234 x 0.37 = 456.58 -> 457 JPY; tax 10 % = 45.7 -> 46
    "JPY rounds to whole yen": Case(flat("0.37"), [[600], [634]], currency="JPY", tax="0.10",
                                    quantity="1234", line="457", tax_amount="46", total="503"),
    # sub-cent prices: 1,234 x 0.0123455 = 15.234347 -> rounded once at the line: 15.23
    "sub-cent prices round once at the line": Case(
        flat("0.0123455"), [[1], [1233]], quantity="1234", line="15.23", total="15.23"),
    # the price book's rounding mode is used: 12.345 half-even -> 12.34, half-up would give 12.35
    "price book rounding mode half-even": Case(
        flat("0.01"), [["1234.5"]], rounding_mode="ROUND_HALF_EVEN", quantity="1234.5",
        line="12.34", total="12.34"),
    # ...and ROUND_UP (ceiling of money) on the same usage -> 12.35; 12.3400001 -> 12.35 too
    "price book rounding mode up": Case(
        flat("0.0100000001"), [["1234"]], rounding_mode="ROUND_UP", quantity="1234",
        line="12.35", total="12.35"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_golden_invoice_totals_match_the_worked_examples(settings, name):
    case = CASES[name]
    cust = "c-" + name.replace(" ", "-")[:40]
    pb = "pb-" + cust
    region = f"R-{cust}" if case.tax else None
    with connect(settings, autocommit=True) as conn:
        seed_price_book(conn, pb, case.currency, case.rounding_mode)
        seed_customer(conn, cust, pb, case.currency, region)
        if case.tax:
            # an older rate, the rate in force at period end, and a future one that must not apply
            seed_tax_rate(conn, region, "0.5", datetime(2020, 1, 1, tzinfo=UTC))
            seed_tax_rate(conn, region, case.tax, datetime(2025, 7, 1, tzinfo=UTC))
            seed_tax_rate(conn, region, "0.9", datetime(2026, 2, 1, tzinfo=UTC))
        for i, amount in enumerate(case.credits):
            seed_credit(conn, f"{cust}-cr{i}", cust, case.currency, amount,
                        JAN - timedelta(days=10 - i))
        for i, events in enumerate(case.windows):
            add_usage(conn, cust, "api_calls", W + timedelta(hours=i), events, case.price,
                      currency=case.currency, price_book_id=pb)

        run_invoicing(conn, "2026-01", [cust], issue=True)

        inv = conn.execute(
            """SELECT kind, status, currency, subtotal, credits_applied, tax, total, invoice_number
                 FROM billing.invoices WHERE customer_id = %s""",
            (cust,),
        ).fetchall()
        assert len(inv) == 1
        kind, status, currency, subtotal, credits_applied, tax, total, number = inv[0]
        assert (kind, status, currency) == ("standard", "issued", case.currency)
        assert number.startswith(f"{datetime.now(UTC).year}-")
        lines = conn.execute(
            "SELECT meter, quantity, amount, rounding_mode FROM billing.invoice_lines "
            "WHERE customer_id = %s",
            (cust,),
        ).fetchall()
        assert lines == [("api_calls", D(case.quantity), D(case.line), case.rounding_mode)]
        assert subtotal == D(case.line)
        assert credits_applied == D(case.credits_applied)
        assert tax == D(case.tax_amount)
        assert total == D(case.total)
        if case.remaining_credit is not None:
            remaining = conn.execute(
                "SELECT sum(remaining) FROM billing.v_credit_balances WHERE customer_id = %s",
                (cust,),
            ).fetchone()[0]
            assert remaining == D(case.remaining_credit)


def test_carried_over_credit_is_used_by_the_next_period(settings):
    # January consumes 98.72 of a 150 credit; February's 49.36 then takes 49.36 of the 51.28 left
    with connect(settings, autocommit=True) as conn:
        seed_price_book(conn, "pb-carry", "USD")
        seed_customer(conn, "carry", "pb-carry", "USD")
        seed_credit(conn, "carry-cr", "carry", "USD", "150", JAN - timedelta(days=3))
        add_usage(conn, "carry", "api_calls", W, [1234], flat("0.08"), price_book_id="pb-carry")
        add_usage(conn, "carry", "api_calls", W + timedelta(days=31), [617], flat("0.08"),
                  price_book_id="pb-carry")
        run_invoicing(conn, "2026-01", ["carry"], issue=True)
        run_invoicing(conn, "2026-02", ["carry"], issue=True)
        rows = conn.execute(
            """SELECT to_char(period_start, 'YYYY-MM'), subtotal, credits_applied, total
                 FROM billing.invoices WHERE customer_id = 'carry' ORDER BY period_start"""
        ).fetchall()
        assert rows == [("2026-01", D("98.72"), D("98.72"), D("0")),
                        ("2026-02", D("49.36"), D("49.36"), D("0"))]
        assert conn.execute(
            "SELECT remaining FROM billing.v_credit_balances WHERE credit_id = 'carry-cr'"
        ).fetchone()[0] == D("1.92")


def test_one_line_per_meter_and_one_invoice_per_customer(settings):
    with connect(settings, autocommit=True) as conn:
        seed_price_book(conn, "pb-multi", "EUR")
        seed_customer(conn, "multi", "pb-multi", "EUR")
        add_usage(conn, "multi", "api_calls", W, [100, 200], flat("0.08"), currency="EUR",
                  price_book_id="pb-multi")
        add_usage(conn, "multi", "storage_gb_hours", W, ["10.5"], flat("0.02"), currency="EUR",
                  price_book_id="pb-multi")
        add_usage(conn, "multi", "api_calls", W + timedelta(hours=1), [700], flat("0.08"),
                  currency="EUR", price_book_id="pb-multi")
        run_invoicing(conn, "2026-01", ["multi"])
        lines = conn.execute(
            """SELECT meter, quantity, amount, charge_count FROM billing.invoice_lines
                WHERE customer_id = 'multi' ORDER BY meter"""
        ).fetchall()
        assert lines == [("api_calls", D(1000), D("80.00"), 2),
                         ("storage_gb_hours", D("10.5"), D("0.21"), 1)]
        inv = conn.execute(
            "SELECT kind, status, subtotal, invoice_number FROM billing.invoices "
            "WHERE customer_id = 'multi'"
        ).fetchall()
        assert inv == [("standard", "draft", D("80.21"), None)]
