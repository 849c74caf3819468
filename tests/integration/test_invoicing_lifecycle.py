"""Invoice lifecycle on real PostgreSQL: idempotency, drafts, corrections, credit notes,
concurrent issuing, immutability, drill-down to raw events, and the analyst role."""

from __future__ import annotations

import multiprocessing as mp
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from jobs.batch.invoicing import issue_drafts, parse_period, run_invoicing
from sinks.db import connect
from tests.integration.dbutil import (
    add_usage,
    admin_connect,
    dump_tables,
    flat,
    fresh_database,
    seed_credit,
    seed_customer,
    seed_price_book,
    seed_tax_rate,
    tiered,
    volume,
)

pytestmark = pytest.mark.integration

D = Decimal
JAN = datetime(2026, 1, 1, tzinfo=UTC)
W = JAN + timedelta(days=4, hours=10)
TIERED = tiered((1000, "0.10"), (None, "0.08"))


@pytest.fixture(scope="module")
def seed():
    """Seeds each test's database (``conn`` connects to it)."""

    def seed(c) -> None:
        seed_price_book(c, "pb", "USD")
        seed_tax_rate(c, "EU-DE", "0.19", datetime(2020, 1, 1, tzinfo=UTC))

    return seed


def _customer(conn, cid, usage=((0, 400), (1, 500), (2, 334)), price=TIERED, region=None):
    seed_customer(conn, cid, "pb", "USD", region)
    for hour, q in usage:
        add_usage(conn, cid, "api_calls", W + timedelta(hours=hour), [q], price)


def test_rerunning_the_invoice_job_changes_nothing(conn):
    for i in range(5):
        _customer(conn, f"cust-{i}", region="EU-DE")
    seed_credit(conn, "cr-1", "cust-1", "USD", "10", JAN - timedelta(days=1))
    run_invoicing(conn, "2026-01")
    drafts = dump_tables(conn)
    # a re-run with drafts present keeps them exactly (same ids, same created_at)
    res = run_invoicing(conn, "2026-01")
    assert (res.new_charges, res.drafts_built, res.drafts_rebuilt) == (0, 0, 0)
    assert dump_tables(conn) == drafts
    run_invoicing(conn, "2026-01", issue=True)
    issued = dump_tables(conn)
    # and a re-run after issuing, with or without --issue, changes nothing either
    run_invoicing(conn, "2026-01", issue=True)
    run_invoicing(conn, "2026-01")
    assert dump_tables(conn) == issued
    assert len(issued["invoices"]) == 5


def test_new_charges_rebuild_the_customers_draft_and_leave_others_alone(conn):
    _customer(conn, "a")
    _customer(conn, "b")
    run_invoicing(conn, "2026-01")
    before = {r[0]: r[1:] for r in conn.execute(
        "SELECT customer_id, invoice_id, subtotal FROM billing.invoices")}
    add_usage(conn, "a", "api_calls", W + timedelta(hours=5), [1000], TIERED)
    res = run_invoicing(conn, "2026-01")
    assert (res.new_charges, res.drafts_rebuilt, res.drafts_built) == (1, 1, 1)
    after = {r[0]: r[1:] for r in conn.execute(
        "SELECT customer_id, invoice_id, subtotal FROM billing.invoices")}
    assert after["b"] == before["b"]                      # untouched
    assert after["a"][0] != before["a"][0]                # rebuilt: a new draft
    assert after["a"][1] == D("198.72")                   # 118.72 + 1000 x 0.08
    assert conn.execute(
        "SELECT count(*) FROM billing.invoices WHERE customer_id = 'a'").fetchone()[0] == 1
    assert conn.execute(
        "SELECT charge_count FROM billing.invoice_lines WHERE customer_id = 'a'").fetchone()[0] == 4


def test_late_charges_after_issue_make_a_correction_invoice_linked_to_the_original(conn):
    _customer(conn, "late", region="EU-DE")
    run_invoicing(conn, "2026-01", issue=True)
    original = conn.execute(
        "SELECT invoice_id, invoice_number, total FROM billing.invoices").fetchone()
    # a late event re-fires the first window: +100 units, crossing deeper into tier 2 (+8.00)
    add_usage(conn, "late", "api_calls", W, [100], TIERED)
    res = run_invoicing(conn, "2026-01", issue=True)
    assert res.documents == {"correction": 1}
    rows = conn.execute(
        """SELECT invoice_id, invoice_number, kind, corrects_invoice_id, subtotal, tax, total
             FROM billing.invoices ORDER BY invoice_id"""
    ).fetchall()
    assert rows[0][:3] == (original[0], original[1], "standard")
    assert rows[0][6] == original[2]                       # the original is never edited
    corr = rows[1]
    assert corr[2:] == ("correction", original[0], D("8.00"), D("1.52"), D("9.52"))
    y = datetime.now(UTC).year
    assert [r[1] for r in rows] == [f"{y}-000001", f"{y}-000002"]  # same sequence
    line = conn.execute(
        """SELECT quantity, amount_precise, amount FROM billing.invoice_lines
            WHERE invoice_id = %s""", (corr[0],)).fetchone()
    assert line == (D(100), D(8), D("8.00"))


def test_a_negative_delta_after_issue_makes_a_credit_note(conn):
    # volume pricing: 900 units at 0.10 = 90.00; a late 200 units put all 1,100 at 0.08 = 88.00
    seed_customer(conn, "vol", "pb", "USD")
    vol = volume((1000, "0.10"), (None, "0.08"))
    add_usage(conn, "vol", "api_calls", W, [900], vol)
    run_invoicing(conn, "2026-01", issue=True)
    add_usage(conn, "vol", "api_calls", W + timedelta(hours=1), [200], vol)
    res = run_invoicing(conn, "2026-01", issue=True)
    assert res.documents == {"credit_note": 1}
    rows = conn.execute(
        """SELECT kind, corrects_invoice_id, subtotal, credits_applied, total, status
             FROM billing.invoices ORDER BY invoice_id""").fetchall()
    std_id = conn.execute(
        "SELECT invoice_id FROM billing.invoices WHERE kind = 'standard'").fetchone()[0]
    assert rows == [("standard", None, D("90.00"), D(0), D("90.00"), "issued"),
                    ("credit_note", std_id, D("-2.00"), D(0), D("-2.00"), "issued")]


def test_corrections_never_drift_from_the_cumulative_rounding(conn):
    # three documents of 1/3 cent each: rounded alone each would be 0.00 (total 0.00, a cent
    # lost); rounding the cumulative amount gives 0.00, 0.01 (2/3 cent), 0.00 — Σ lines over all
    # documents = round(Σ charges) = 0.01 exactly
    seed_customer(conn, "cents", "pb", "USD")
    third = flat("0.0033333333")
    for h in range(3):
        add_usage(conn, "cents", "api_calls", W + timedelta(hours=h), [1], third)
        run_invoicing(conn, "2026-01", issue=True)
    amounts = [r[0] for r in conn.execute(
        "SELECT amount FROM billing.invoice_lines ORDER BY line_id")]
    assert amounts == [D("0.00"), D("0.01"), D("0.00")]


def _issue_worker(conninfo_db: str, customers: list[str], barrier, rollback_first: bool) -> None:
    from schemas.config import load_settings

    s = load_settings()
    s = s.model_copy(update={"postgres": s.postgres.model_copy(update={"database": conninfo_db})})
    with connect(s, autocommit=True) as c:
        barrier.wait()
        if rollback_first:
            # issue inside a transaction that is rolled back: must leave no gap
            try:
                with c.transaction():
                    c.execute("SELECT * FROM billing.issue_drafts(NULL, %s)", (customers[:3],))
                    raise RuntimeError("rollback")
            except RuntimeError:
                pass
        for cust in customers:  # one small transaction per customer: maximal interleaving
            issue_drafts(c, parse_period("2026-01"), [cust])


def test_two_processes_issuing_at_once_produce_gapless_unique_numbers(settings, conn):
    n = 40
    for i in range(n):
        seed_customer(conn, f"k{i:02d}", "pb", "USD")
        add_usage(conn, f"k{i:02d}", "api_calls", W, [10 + i], flat("0.08"))
    run_invoicing(conn, "2026-01")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    # both processes try every customer (in opposite orders): each draft is issued exactly once
    names = [f"k{i:02d}" for i in range(n)]
    procs = [
        ctx.Process(target=_issue_worker,
                    args=(settings.postgres.database, names, barrier, True)),
        ctx.Process(target=_issue_worker,
                    args=(settings.postgres.database, names[::-1], barrier, False)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    nums = [r[0] for r in conn.execute(
        "SELECT invoice_number FROM billing.invoices ORDER BY invoice_number")]
    y = datetime.now(UTC).year
    assert nums == [f"{y}-{k:06d}" for k in range(1, n + 1)]
    assert conn.execute(
        "SELECT last_number FROM billing.invoice_number_counters WHERE year = %s", (y,)
    ).fetchone()[0] == n


@pytest.mark.parametrize(
    "statement",
    [
        # change a total of an issued invoice
        "UPDATE billing.invoices SET total = total + 1",
        # renumber it
        "UPDATE billing.invoices SET invoice_number = '2026-999999'",
        # put it back to draft
        "UPDATE billing.invoices SET status = 'draft'",
        "DELETE FROM billing.invoices",
        "UPDATE billing.invoice_lines SET amount = 0",
        "DELETE FROM billing.invoice_lines",
        "DELETE FROM billing.invoice_line_charges",
        "UPDATE billing.invoice_line_charges SET line_id = line_id + 0, invoice_id = invoice_id + 1",
        "DELETE FROM billing.credit_applications",
        "TRUNCATE billing.invoices CASCADE",
        # add a line to an issued invoice
        """INSERT INTO billing.invoice_lines (invoice_id, customer_id, period_start, meter, currency,
             quantity, amount_precise, amount, rounding_mode, charge_count)
           SELECT invoice_id, customer_id, period_start, 'extra', currency, 1, 1, 1, 'ROUND_HALF_UP', 1
             FROM billing.invoices""",
    ],
)
def test_issued_documents_cannot_be_updated_or_deleted(settings, conn, statement):
    _customer(conn, "imm")
    seed_credit(conn, "imm-cr", "imm", "USD", "5", JAN - timedelta(days=1))
    run_invoicing(conn, "2026-01", issue=True)
    before = dump_tables(conn)
    with pytest.raises((psycopg.errors.RestrictViolation, psycopg.errors.InsufficientPrivilege)):
        conn.execute(statement)  # the app role: a guard, or no privilege at all
    with admin_connect(settings, autocommit=True) as su, pytest.raises(psycopg.errors.RestrictViolation):
        su.execute(statement)  # even a superuser: the guards
    assert dump_tables(conn) == before


def test_a_draft_cannot_be_born_issued_or_numbered_by_the_client(conn):
    with pytest.raises(psycopg.errors.RestrictViolation):
        seed_customer(conn, "x", "pb", "USD")
        conn.execute(
            """INSERT INTO billing.invoices (customer_id, period_start, period_end, currency,
                 minor_units, kind, subtotal, total, status, invoice_number, issued_at)
               VALUES ('x', '2026-01-01Z', '2026-02-01Z', 'USD', 2, 'standard', 0, 0, 'issued',
                       '2026-000007', now())""")


def test_a_charge_can_never_be_linked_to_two_lines(conn):
    _customer(conn, "dup")
    run_invoicing(conn, "2026-01")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            """INSERT INTO billing.invoice_line_charges (charge_id, line_id, invoice_id)
               SELECT charge_id, line_id, invoice_id FROM billing.invoice_line_charges LIMIT 1""")


def test_drill_down_returns_exactly_the_raw_events_behind_a_line(conn):
    seed_customer(conn, "drill", "pb", "USD")
    seed_customer(conn, "other", "pb", "USD")
    mine = []
    for h, evs in enumerate([[1, 2, 3], [4], [5, 6]]):
        add_usage(conn, "drill", "api_calls", W + timedelta(hours=h), evs, flat("0.08"))
    # a late event that revises window 0 (two charges for the same window: events listed once)
    add_usage(conn, "drill", "api_calls", W, [7], flat("0.08"))
    # noise: another meter, another customer, another period — none of them behind the line
    add_usage(conn, "drill", "storage_gb_hours", W, [9], flat("0.01"))
    add_usage(conn, "other", "api_calls", W, [8], flat("0.08"))
    add_usage(conn, "drill", "api_calls", W + timedelta(days=40), [10], flat("0.08"))
    mine = sorted(r[0] for r in conn.execute(
        """SELECT event_id FROM billing.usage_events WHERE customer_id = 'drill'
             AND meter = 'api_calls' AND window_start < '2026-02-01Z'"""))
    run_invoicing(conn, "2026-01", issue=True)
    line_id = conn.execute(
        """SELECT line_id FROM billing.invoice_lines WHERE customer_id = 'drill'
             AND meter = 'api_calls'""").fetchone()[0]
    got = conn.execute(
        "SELECT event_id, quantity FROM billing.v_invoice_line_events WHERE line_id = %s",
        (line_id,)).fetchall()
    assert sorted(e for e, _ in got) == mine
    assert len(got) == 7
    assert sum(q for _, q in got) == D(28)
    explained = conn.execute(
        """SELECT quantity, amount, jsonb_array_length(charges), charges -> 0 ->> 'cause'
             FROM billing.v_invoice_lines_explained WHERE line_id = %s""", (line_id,)).fetchone()
    assert explained == (D(28), D("2.24"), 4, "window_fired")


def test_analyst_views_hide_revisions_and_deltas(conn):
    seed_customer(conn, "v", "pb", "USD")
    add_usage(conn, "v", "api_calls", W, [600], TIERED)
    add_usage(conn, "v", "api_calls", W + timedelta(hours=1), [600], TIERED)
    add_usage(conn, "v", "api_calls", W, [34], TIERED)  # late revision of window 0
    usage = conn.execute(
        """SELECT window_start, quantity, event_count, revisions FROM billing.v_current_usage
            WHERE customer_id = 'v' ORDER BY window_start""").fetchall()
    assert usage == [(W, D(634), 2, 2), (W + timedelta(hours=1), D(600), 1, 1)]
    charges = conn.execute(
        """SELECT window_start, quantity, amount, charge_count FROM billing.v_window_charges
            WHERE customer_id = 'v' ORDER BY window_start""").fetchall()
    assert [c[1] for c in charges] == [D(634), D(600)]
    assert sum(c[2] for c in charges) == D("118.72")
    assert [c[3] for c in charges] == [2, 1]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO billing.credits (credit_id, customer_id, currency, amount) VALUES ('z', 'an', 'USD', 1)",
        "UPDATE billing.customers SET tax_region = 'X'",
        "DELETE FROM billing.invoices",
        "INSERT INTO billing.invoice_number_counters VALUES (1999, 0)",
        "SELECT * FROM billing.issue_drafts()",
        "CREATE TABLE billing.mine (x int)",
    ],
)
def test_the_analyst_role_can_read_but_cannot_write(settings, conn, statement):
    _customer(conn, "an")
    run_invoicing(conn, "2026-01", issue=True)
    conn = admin_connect(settings, autocommit=True)  # the app role may not become the analyst
    with conn, conn.transaction():
        conn.execute("SET LOCAL ROLE meterflow_analyst")
        assert conn.execute("SELECT count(*) FROM billing.v_invoice_lines_explained").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM billing.v_invoice_line_events").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM billing.rated_charges").fetchone()[0] == 3
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute(statement)
        # tables not meant for analysts are not readable either
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute("SELECT * FROM billing.schema_migrations")


def test_the_analyst_role_migration_is_idempotent_across_databases(settings):
    # the role is cluster-wide: a second database migrates fine while it exists
    with fresh_database() as other, connect(other) as c:
        assert c.execute(
            "SELECT has_table_privilege('meterflow_analyst', 'billing.v_invoices', 'SELECT')"
        ).fetchone()[0]
