"""The charge links and the invoice numbering of migration V004, on real PostgreSQL.

Links live in ``billing.invoice_line_links`` (charge_seq, line_id, invoice_id); the old name
``billing.invoice_line_charges`` is a view over it. Numbers are handed out from a transaction-local
cache of the year's counter and checked against the counter once per statement.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from jobs.batch.invoicing import run_invoicing
from tests.integration.dbutil import (
    add_usage,
    admin_connect,
    dump_tables,
    flat,
    seed_customer,
    seed_price_book,
)

pytestmark = pytest.mark.integration

JAN = datetime(2026, 1, 1, tzinfo=UTC)
W = JAN + timedelta(days=4, hours=10)
PRICE = flat("0.08")


@pytest.fixture(scope="module")
def seed():
    """Seeds each test's database (``conn`` connects to it)."""
    return lambda c: seed_price_book(c, "pb", "USD")


def _customer(conn, cid: str, windows=(3, 4, 5)) -> None:
    seed_customer(conn, cid, "pb", "USD")
    for h, q in enumerate(windows):
        add_usage(conn, cid, "api_calls", W + timedelta(hours=h), [q], PRICE)


def _year() -> int:
    return datetime.now(UTC).year


def test_every_charge_gets_a_distinct_charge_seq_from_the_database(settings, conn):
    _customer(conn, "a")
    _customer(conn, "b")
    seqs = [r[0] for r in conn.execute("SELECT charge_seq FROM billing.rated_charges")]
    assert len(seqs) == 6 and None not in seqs and len(set(seqs)) == 6
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            """INSERT INTO billing.rated_charges (charge_id, customer_id, meter, period_start,
                 window_start, window_end, revision, currency, quantity_delta, amount,
                 price_book_id, price_version, calculation, cause, charge_seq)
               SELECT gen_random_uuid(), customer_id, meter, period_start, window_start,
                      window_end, revision + 1, currency, 0, 0, price_book_id, price_version,
                      calculation, cause, charge_seq
                 FROM billing.rated_charges LIMIT 1""")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the app role may not update
        conn.execute("UPDATE billing.rated_charges SET charge_seq = charge_seq + 1000")
    with admin_connect(settings, autocommit=True) as su, pytest.raises(psycopg.errors.RestrictViolation):
        su.execute("UPDATE billing.rated_charges SET charge_seq = charge_seq + 1000")


def test_a_charge_can_never_be_linked_twice_in_the_links_table(conn):
    _customer(conn, "dup")
    run_invoicing(conn, "2026-01")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            """INSERT INTO billing.invoice_line_links (charge_seq, line_id, invoice_id)
               SELECT charge_seq, line_id, invoice_id FROM billing.invoice_line_links LIMIT 1""")
    # nor to a line of another document: a second draft's line cannot take it either
    _customer(conn, "other")
    run_invoicing(conn, "2026-01")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            """INSERT INTO billing.invoice_line_links (charge_seq, line_id, invoice_id)
               SELECT k.charge_seq, l.line_id, l.invoice_id
                 FROM billing.invoice_line_links k, billing.invoice_lines l
                WHERE l.customer_id = 'other' AND k.invoice_id <> l.invoice_id LIMIT 1""")


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM billing.invoice_line_links",
        "UPDATE billing.invoice_line_links SET line_id = line_id",         # identical: skipped
        "UPDATE billing.invoice_line_links SET invoice_id = invoice_id + 1",
        "UPDATE billing.invoice_line_links SET charge_seq = charge_seq + 1000000",
        "TRUNCATE billing.invoice_line_links",
        # add a link to an issued invoice (a new charge of the period, not linked yet)
        "INSERT INTO billing.invoice_line_links (charge_seq, line_id, invoice_id) "
        "SELECT c.charge_seq, k.line_id, k.invoice_id FROM billing.rated_charges c, "
        "billing.invoice_line_links k WHERE c.caused_by = 'extra' LIMIT 1",
        # the same through the compatibility view
        "DELETE FROM billing.invoice_line_charges",
        "INSERT INTO billing.invoice_line_charges (charge_id, line_id, invoice_id) "
        "SELECT c.charge_id, k.line_id, k.invoice_id FROM billing.rated_charges c, "
        "billing.invoice_line_links k WHERE c.caused_by = 'extra' LIMIT 1",
    ],
)
def test_links_of_an_issued_invoice_cannot_change(settings, conn, statement):
    _customer(conn, "imm")
    run_invoicing(conn, "2026-01", issue=True)
    conn.execute(
        """INSERT INTO billing.rated_charges (charge_id, customer_id, meter, period_start,
             window_start, window_end, revision, currency, quantity_delta, amount, price_book_id,
             price_version, calculation, cause, caused_by)
           VALUES (gen_random_uuid(), 'imm', 'api_calls', %s, %s, %s, 9, 'USD', 1, 0.08, 'pb',
                   'v1', '{}', 'rerate', 'extra')""", (JAN, W, W + timedelta(hours=1)))
    before = dump_tables(conn, ("invoice_line_links", "invoice_line_charges", "invoices"))
    if statement.endswith("SET line_id = line_id"):
        conn.execute(statement)          # an UPDATE that changes nothing is a harmless no-op
    else:
        with pytest.raises((psycopg.errors.RestrictViolation, psycopg.errors.InsufficientPrivilege)):
            conn.execute(statement)  # the app role: a guard, or no privilege at all
        with admin_connect(settings, autocommit=True) as su, pytest.raises(psycopg.errors.RestrictViolation):
            su.execute(statement)  # even a superuser: the guards
    assert dump_tables(conn, ("invoice_line_links", "invoice_line_charges", "invoices")) == before


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        # a charge that does not exist
        ("INSERT INTO billing.invoice_line_links (charge_seq, line_id, invoice_id) "
         "SELECT 999999999, line_id, invoice_id FROM billing.invoice_lines LIMIT 1",
         "charge 999999999 does not exist"),
        # a line of another invoice
        ("INSERT INTO billing.invoice_line_links (charge_seq, line_id, invoice_id) "
         "SELECT c.charge_seq, l.line_id, l.invoice_id + 1000 FROM billing.rated_charges c, "
         "billing.invoice_lines l WHERE c.customer_id = 'late' LIMIT 1",
         "of that invoice does not exist"),
        # a draft line that still has links cannot go
        ("DELETE FROM billing.invoice_lines WHERE customer_id = 'fk'",
         "still has charge links"),
    ],
)
def test_links_name_existing_charges_and_lines(conn, statement, message):
    _customer(conn, "fk")
    run_invoicing(conn, "2026-01")                      # a draft
    _customer(conn, "late", windows=(7,))               # a charge not linked yet
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=message):
        conn.execute(statement)


def test_rebuilding_a_draft_replaces_its_links(conn):
    _customer(conn, "r")
    run_invoicing(conn, "2026-01")
    add_usage(conn, "r", "api_calls", W + timedelta(hours=9), [10], PRICE)
    res = run_invoicing(conn, "2026-01")
    assert (res.new_charges, res.drafts_rebuilt, res.charges_invoiced) == (1, 1, 4)
    rows = conn.execute(
        """SELECT k.invoice_id, l.invoice_id, count(*) FROM billing.invoice_line_links k
             JOIN billing.invoice_lines l USING (line_id) GROUP BY 1, 2""").fetchall()
    inv = conn.execute("SELECT invoice_id FROM billing.invoices").fetchall()
    assert len(inv) == 1 and rows == [(inv[0][0], inv[0][0], 4)]


def test_the_drill_down_from_a_line_to_its_charges_can_use_an_index(conn):
    for c in ("x", "y", "z"):
        _customer(conn, c)
    run_invoicing(conn, "2026-01", issue=True)
    line_id, n = conn.execute(
        "SELECT line_id, charge_count FROM billing.invoice_lines WHERE customer_id = 'y'"
    ).fetchone()
    q = "SELECT charge_id FROM billing.invoice_line_charges WHERE line_id = %s"
    assert len(conn.execute(q, (line_id,)).fetchall()) == n == 3
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + q, (line_id,)))
    assert "invoice_line_links_line_brin" in plan


def test_an_issue_run_numbers_drafts_by_customer_and_standard_first(conn):
    # drafts created in the reverse of the customers' order, and a correction drafted before
    # the standard invoice of another customer: numbers still follow (customer, standard first)
    for c in ("c3", "c2", "c1"):
        _customer(conn, c)
        run_invoicing(conn, "2026-01", customers=[c])
    run_invoicing(conn, "2026-01", customers=["c2"], issue=True)
    add_usage(conn, "c2", "api_calls", W + timedelta(hours=8), [5], PRICE)   # c2's correction
    run_invoicing(conn, "2026-01", customers=["c2"])
    run_invoicing(conn, "2026-01", issue=True)
    y = _year()
    rows = conn.execute(
        """SELECT customer_id, kind, invoice_number FROM billing.invoices
            ORDER BY invoice_number""").fetchall()
    assert rows == [("c2", "standard", f"{y}-000001"), ("c1", "standard", f"{y}-000002"),
                    ("c2", "correction", f"{y}-000003"), ("c3", "standard", f"{y}-000004")]
    assert conn.execute("SELECT last_number FROM billing.invoice_number_counters WHERE year = %s",
                        (y,)).fetchone()[0] == 4


def test_issuing_with_plain_updates_keeps_the_numbers_gapless(conn):
    for c in ("p1", "p2", "p3", "p4"):
        _customer(conn, c)
    run_invoicing(conn, "2026-01")
    y = _year()
    with conn.transaction():
        # two statements in one transaction, the second with two rows: 1, then 2 and 3
        conn.execute("UPDATE billing.invoices SET status = 'issued' WHERE customer_id = 'p1'")
        conn.execute(  # the client's number is ignored
            """UPDATE billing.invoices SET status = 'issued', invoice_number = '2026-777777'
                WHERE customer_id IN ('p2', 'p3')""")
    # a rolled-back issue leaves no gap
    with pytest.raises(RuntimeError), conn.transaction():
        conn.execute("UPDATE billing.invoices SET status = 'issued' WHERE customer_id = 'p4'")
        raise RuntimeError("rollback")
    conn.execute("SELECT * FROM billing.issue_drafts()")
    nums = [r[0] for r in conn.execute(
        "SELECT invoice_number FROM billing.invoices ORDER BY invoice_number")]
    assert nums == [f"{y}-{k:06d}" for k in range(1, 5)]
    assert conn.execute("SELECT last_number FROM billing.invoice_number_counters WHERE year = %s",
                        (y,)).fetchone()[0] == 4


@pytest.mark.parametrize("cached", ["100", "0"])
def test_a_forged_number_cache_cannot_make_a_gap_or_a_duplicate(conn, cached):
    for c in ("f1", "f2", "f3"):
        _customer(conn, c)
    run_invoicing(conn, "2026-01", customers=["f1"], issue=True)
    run_invoicing(conn, "2026-01")
    y = _year()
    before = dump_tables(conn, ("invoices", "invoice_number_counters"))
    with pytest.raises((psycopg.errors.RestrictViolation, psycopg.errors.UniqueViolation)), \
            conn.transaction():
        conn.execute("SELECT set_config(%s, %s, true)",
                     (f"billing.last_invoice_number_{y}", cached))
        conn.execute("SELECT * FROM billing.issue_drafts()")
    assert dump_tables(conn, ("invoices", "invoice_number_counters")) == before
    conn.execute("SELECT * FROM billing.issue_drafts()")
    nums = [r[0] for r in conn.execute(
        "SELECT invoice_number FROM billing.invoices ORDER BY invoice_number")]
    assert nums == [f"{y}-{k:06d}" for k in range(1, 4)]
