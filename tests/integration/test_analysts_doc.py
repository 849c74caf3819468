"""docs/ANALYSTS.md cannot drift from the views (issue 19): every ```sql block of the page is run
as ``meterflow_analyst`` on a known dataset made by the real writers (ledger writer, re-rating
fold, invoice job, dead-letter copier, reconciliation), in a session whose time zone is not UTC,
and the answers to the everyday questions are checked."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from jobs.batch.invoicing import run_invoicing
from jobs.batch.reconcile import run_reconcile
from jobs.consumers.dead_letters import apply_dead_letters, dead_letter_row
from jobs.consumers.rerating import apply_late_batch
from schemas.config import MeterSettings
from schemas.records import LedgerEvent
from sinks.db import connect
from sinks.ledger import apply_batch
from sinks.meters import sync_meters
from sinks.pricebook_store import PriceBooks
from tests.integration.dbutil import admin_connect, fresh_database
from tests.integration.test_ledger import Offsets, ev, firing, late, seed_prices

pytestmark = pytest.mark.integration

D = Decimal
DOC = Path(__file__).resolve().parents[2] / "docs" / "ANALYSTS.md"
H = timedelta(hours=1)
DEC = datetime(2025, 12, 1, tzinfo=UTC)
JAN5 = datetime(2026, 1, 5, 10, tzinfo=UTC)
JAN6 = datetime(2026, 1, 6, 10, tzinfo=UTC)
AGG = {"api_calls": "sum", "active_seats": "max"}
PRICES = [
    {"meter": "api_calls", "model": "tiered",
     "tiers": [{"up_to": "1000", "unit_price": "0.10"}, {"unit_price": "0.08"}]},
    {"meter": "active_seats", "model": "flat", "unit_price": "5"},
]


def book(pid: str, currency: str) -> dict:
    return {"price_book_id": pid, "currency": currency,
            "versions": [{"name": "v1", "effective_from": "2025-01-01T00:00:00Z", "prices": PRICES}]}


def doc_queries() -> dict[str, str]:
    """The page's ```sql blocks by their ``-- q: name`` line."""
    out = {}
    for block in re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        m = re.match(r"-- q: (\w+)", block)
        assert m, f"a ```sql block of ANALYSTS.md has no '-- q: name' first line:\n{block}"
        out[m.group(1)] = block
    return out


@pytest.fixture(scope="module")
def dataset():
    with fresh_database() as s:
        with connect(s) as conn:
            seed_prices(conn, book("std-eur", "EUR"), customers=["acme", "globex"])
            seed_prices(conn, book("std-usd", "USD"), customers=["initech"])
            conn.execute("UPDATE customers SET tax_region = 'EU' WHERE customer_id = 'acme'")
            conn.execute("INSERT INTO tax_rates (region, effective_from, rate) VALUES ('EU', '2025-01-01Z', 0.2)")
            conn.execute("""INSERT INTO credits (credit_id, customer_id, currency, amount, granted_at) VALUES
                            ('acme-eur', 'acme', 'EUR', 80, '2025-11-20Z'),
                            ('acme-usd', 'acme', 'USD', 50, '2025-11-21Z')""")
            conn.commit()
            sync_meters(conn, [MeterSettings(name="api_calls", aggregation="sum", unit="call"),
                               MeterSettings(name="active_seats", aggregation="max", unit="seat")])
            off, books = Offsets(), PriceBooks()

            def apply(items):
                apply_batch(conn, off.batch(items), consumer="doc", books=books, aggregations=AGG)

            def window(c, m, ws, *qs, ids=()):
                evs = [ev(c, m, ws, q, event_id=i) for q, i in zip(qs, [*ids, *[None] * len(qs)], strict=False)]
                apply([*evs, firing(c, m, ws, evs)])
                return evs

            window("acme", "api_calls", DEC + 9 * H, "500")
            window("globex", "api_calls", DEC + 9 * H, "100")
            first = window("acme", "api_calls", JAN5, "400", "500", ids=("acme-e1", "acme-e2"))[0]
            window("acme", "api_calls", JAN6, "334")
            for h, q in ((0, "10"), (1, "8")):
                window("acme", "active_seats", JAN5 + h * H, q)
            window("acme", "active_seats", JAN6, "12")
            window("globex", "api_calls", JAN5, "2000")
            window("initech", "api_calls", JAN5, "100")
            window("nobody", "api_calls", JAN5, "1")  # no such customer: a rating error
            # a copy of an accepted event, from another offset: a duplicate
            apply([LedgerEvent("acme-e1", "acme", "api_calls", first.event_time, first.quantity, None,
                               JAN5, first.ingestion_time, "stream", "usage-events", 0, 999, "on_time", JAN5 + H)])
            conn.commit()
        with connect(s, autocommit=True) as conn:
            run_invoicing(conn, "2025-12", issue=True)
            run_invoicing(conn, "2026-01", issue=True)
        with connect(s) as conn:
            # after the invoice: one event late within allowed lateness, one beyond it
            apply_batch(conn, Offsets().batch([late("acme", "api_calls", JAN5, "100", "acme-late-1")]),
                        consumer="doc-late", books=PriceBooks(), aggregations=AGG)
            too_late = LedgerEvent("acme-too-late", "acme", "api_calls", JAN5 + timedelta(minutes=3), D("6"),
                                   None, JAN5, JAN5 + 50 * H, "late", "usage-events-late", 0, 1, "late", JAN5 + H)
            apply_late_batch(conn, [too_late], consumer="doc-rerating", books=PriceBooks(),
                             aggregations=AGG, window_size=H)
            conn.commit()
            rows = [dead_letter_row("usage-events-dlq", 0, i, json.dumps({
                "reason": "invalid_quantity", "message": "quantity must be >= 0", "payload_bytes": 90,
                "payload": json.dumps({"event_id": f"bad-{i}", "customer_id": "acme", "meter": "api_calls",
                                       "event_time": f"2026-01-0{i + 1}T00:00:00Z", "quantity": "-1"}),
                "ingestion_time_ms": 1767600000000}).encode(), None) for i in range(2)]
            apply_dead_letters(conn, rows, consumer="dead-letters", start_offsets={("usage-events-dlq", 0): 0},
                               next_offsets={("usage-events-dlq", 0): 2})
            conn.commit()
        with connect(s, autocommit=True) as conn:
            run_invoicing(conn, "2026-01", issue=True)  # the correction
            run_reconcile(conn, s, "2026-01", use_kafka=False)
            number = conn.execute(
                """SELECT invoice_number FROM invoices WHERE customer_id = 'acme' AND kind = 'standard'
                     AND period_start = '2026-01-01Z'""").fetchone()[0]
        yield s, number


def run_as_analyst(settings, sql: str) -> list[tuple]:
    with admin_connect(settings) as conn:
        conn.execute("SET ROLE meterflow_analyst")
        conn.execute("SET TIME ZONE 'Pacific/Auckland'")  # the answers must not depend on it
        return conn.execute(sql).fetchall()


def test_every_query_of_the_page_runs_as_the_analyst(dataset) -> None:
    settings, number = dataset
    queries = doc_queries()
    assert len(queries) >= 15
    for name, sql in queries.items():
        if name == "create_role":
            continue
        try:
            rows = run_as_analyst(settings, sql.replace("'2026-000042'", f"'{number}'"))
        except Exception as e:
            raise AssertionError(f"{name}: {e}") from e
        assert rows or "(may be empty)" in sql.splitlines()[0], f"{name} returned nothing on the known dataset"


def q(dataset, name: str) -> list[tuple]:
    settings, number = dataset
    return run_as_analyst(settings, doc_queries()[name].replace("'2026-000042'", f"'{number}'"))


def test_the_answers(dataset) -> None:
    utc = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    assert q(dataset, "top_customers") == [
        ("EUR", "acme", D("187.20"), D("31.44"), D("188.64")),
        ("EUR", "globex", D("180.00"), D("0"), D("180.00")),
        ("USD", "initech", D("10.00"), D("0"), D("10.00"))]
    # seats: the day's peak (10, not 18); days in UTC whatever the session's time zone
    assert q(dataset, "daily_usage") == [
        (utc(2026, 1, 5), "active_seats", "seat", D("10")), (utc(2026, 1, 5), "api_calls", "call", D("1006")),
        (utc(2026, 1, 6), "active_seats", "seat", D("12")), (utc(2026, 1, 6), "api_calls", "call", D("334"))]
    assert q(dataset, "usage_per_window") == [(JAN5, D("1006"), 4, 3), (JAN6, D("334"), 1, 1)]
    assert [r[1:] for r in q(dataset, "documents")] == [
        ("standard", "issued", None, D("178.72"), D("30.00"), D("29.74"), D("178.46")),
        ("correction", "issued", dataset[1], D("8.48"), D("0"), D("1.70"), D("10.18"))]
    assert [r[1:] for r in q(dataset, "invoice_lines")] == [
        ("standard", "active_seats", "max", "seat", D("30"), D("12"), D("60.00")),
        ("standard", "api_calls", "sum", "call", D("1234"), D("1234"), D("118.72")),
        ("correction", "api_calls", "sum", "call", D("106"), D("106"), D("8.48"))]
    assert q(dataset, "customer_period") == [
        ("EUR", D("178.72"), D("8.48"), D("0"), D("187.20"), D("30.00"), D("31.44"), D("188.64"),
         D("178.72"), D("8.48"))]
    charges = q(dataset, "invoice_charges")
    assert len(charges) == 5 and {r[3] for r in charges} == {"window_fired"}
    events = dict(run_as_analyst(dataset[0], "SELECT charge_id, cardinality(event_ids) FROM billing.v_charges"))
    assert sum(events[r[-1]] for r in charges) == 6  # each firing's events: 2 + 1 api calls, 1 + 1 + 1 seats
    events = q(dataset, "line_events")
    assert [r[1] for r in events][:2] == ["acme-e1", "acme-e2"] and len(events) == 5
    correction = q(dataset, "documents")[1][0]
    assert q(dataset, "why_correction") == [
        (correction, "api_calls", JAN5, 2, "late_revision", D("8"), "acme-late-1", D("100"), "late_within"),
        (correction, "api_calls", JAN5, 3, "late_event", D("0.48"), "acme-too-late", D("6"), "late")]
    assert [r[1] for r in q(dataset, "calculation")] == ["late_revision", "late_event"]
    assert q(dataset, "late_vs_on_time") == [("EUR", D("358.72"), D("8.48")), ("USD", D("10"), None)]
    assert q(dataset, "growth") == [("globex", "EUR", D("10.00"), D("180.00"), D("1700.0")),
                                    ("acme", "EUR", D("50.00"), D("187.20"), D("274.4")),
                                    ("initech", "USD", None, D("10.00"), None)]
    assert q(dataset, "rejections") == [("metering", "invalid_quantity", 2)]
    assert q(dataset, "duplicates") == [("api_calls", 1, 1)]
    assert [r[:2] + r[3:] for r in q(dataset, "rating_errors")] == [("nobody", "api_calls", 1, False)]
    assert len(q(dataset, "reconciliation")) == 1
    assert q(dataset, "credits") == [
        ("acme-eur", "EUR", D("80"), D("80"), D("0"), D("0"), True, D("0"),
         [f"{datetime.now(UTC).year}-{n:06d}" for n in (1, 3)]),
        ("acme-usd", "USD", D("50"), D("0"), D("0"), D("50"), False, D("0"), [])]
    assert len(q(dataset, "charge_to_aggregate")) == 7


def test_the_analyst_role_still_writes_nothing(dataset) -> None:
    import psycopg

    settings, _ = dataset
    for stmt in ("UPDATE billing.meters SET unit = 'x'", "INSERT INTO billing.dead_letters "
                 "(kafka_topic, kafka_partition, kafka_offset, reason, rejected_at, period_start, payload_bytes) "
                 "VALUES ('t', 0, 0, 'r', now(), now(), 0)", "DELETE FROM billing.usage_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            run_as_analyst(settings, stmt)
