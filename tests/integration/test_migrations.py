"""Migrations on the real PostgreSQL: applying them twice is a no-op, a changed migration is
refused, and the append-only tables reject UPDATE, DELETE and TRUNCATE (invariant 4) even for
a superuser that keeps the triggers on. Migrations are not the app role's business, so these
tests connect as the superuser; what the app role may do: test_least_privilege.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from sinks.migrate import MigrationError, discover, migrate
from tests.integration.dbutil import admin_connect, fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.module_database]
NOV = datetime(2026, 11, 1, tzinfo=UTC)


def test_applying_the_migrations_twice_is_a_no_op(settings) -> None:
    with admin_connect(settings) as conn:
        before = conn.execute("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY 1").fetchall()
        assert [v for v, _, _ in before] == [m.version for m in discover()]
        assert migrate(conn) == []
        after = conn.execute("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY 1").fetchall()
        assert after == before


def test_a_migration_changed_after_it_was_applied_is_refused(settings, tmp_path: Path) -> None:
    for m in discover():
        (tmp_path / m.path.name).write_text(m.sql)
    first = sorted(tmp_path.glob("V001__*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after release\n")
    with admin_connect(settings) as conn, pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(conn, tmp_path)


def _seed_charge(conn: psycopg.Connection) -> uuid.UUID:
    cid = uuid.uuid4()
    conn.execute(
        """INSERT INTO rated_charges (charge_id, customer_id, meter, period_start, window_start, window_end,
                  revision, currency, quantity_delta, amount, price_book_id, price_version, calculation, cause)
           VALUES (%s, 'c', 'api_calls', %s, %s, %s, 1, 'USD', 5, 0.5, 'pb', 'v1', '{}', 'window_fired')""",
        (cid, NOV, NOV, NOV.replace(hour=1)),
    )
    conn.commit()
    return cid


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE rated_charges SET amount = amount + 1 WHERE charge_id = %s",  # change a charge
        "UPDATE rated_charges SET cause = 'rerate' WHERE charge_id = %s",  # re-label it
        "DELETE FROM rated_charges WHERE charge_id = %s",  # remove it
    ],
)
def test_the_database_rejects_changing_or_deleting_a_charge(settings, statement: str) -> None:
    with admin_connect(settings) as conn:
        cid = _seed_charge(conn)
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            conn.execute(statement, (cid,))
        conn.rollback()
        assert conn.execute("SELECT amount FROM rated_charges WHERE charge_id = %s", (cid,)).fetchone()[0] == 0.5


@pytest.mark.parametrize("table", ["usage_events", "aggregated_usage", "rated_charges"])
def test_the_database_rejects_truncating_history(settings, table: str) -> None:
    with admin_connect(settings) as conn:
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            conn.execute(f"TRUNCATE {table}")  # fixed table names from the parametrize list
        conn.rollback()


def test_an_update_that_changes_nothing_is_a_harmless_no_op(settings) -> None:
    """So an idempotent replay of an upsert never fails."""
    with admin_connect(settings) as conn:
        cid = _seed_charge(conn)
        conn.execute("UPDATE rated_charges SET amount = amount WHERE charge_id = %s", (cid,))
        conn.commit()


@pytest.fixture()
def pre_v004(tmp_path: Path):
    """A database at V003 (before the narrow invoice links), and the folder of V001–V003."""
    old = tmp_path / "old"
    old.mkdir()
    for m in discover():
        if m.version < 4:
            (old / m.path.name).write_text(m.sql)
    with fresh_database() as s:  # fully migrated: start again from an empty schema at V003
        with admin_connect(s, autocommit=True) as conn:
            conn.execute("DROP SCHEMA billing CASCADE")
            migrate(conn, old)
        yield s


def test_v004_keeps_existing_links_and_their_guarantees(pre_v004) -> None:
    with admin_connect(pre_v004, autocommit=True) as conn:
        # an invoice issued under V003: two charges linked to one line (old table, old issuing)
        conn.execute("INSERT INTO price_books (price_book_id, currency) VALUES ('pb', 'USD')")
        conn.execute("INSERT INTO customers (customer_id, price_book_id, currency) "
                     "VALUES ('c', 'pb', 'USD')")
        ids = [_seed_charge(conn) for _ in range(3)]
        inv = conn.execute(
            """INSERT INTO invoices (customer_id, period_start, period_end, currency, minor_units,
                 kind, subtotal, total) VALUES ('c', %s, %s, 'USD', 2, 'standard', 1, 1)
               RETURNING invoice_id""", (NOV, NOV.replace(month=12))).fetchone()[0]
        line = conn.execute(
            """INSERT INTO invoice_lines (invoice_id, customer_id, period_start, meter, currency,
                 quantity, amount_precise, amount, rounding_mode, charge_count)
               VALUES (%s, 'c', %s, 'api_calls', 'USD', 10, 1, 1, 'ROUND_HALF_UP', 2)
               RETURNING line_id""", (inv, NOV)).fetchone()[0]
        with conn.transaction():
            for cid in ids[:2]:
                conn.execute("INSERT INTO invoice_line_charges VALUES (%s, %s, %s)",
                             (cid, line, inv))
        number = conn.execute("SELECT invoice_number FROM issue_drafts()").fetchone()[0]
        links = "SELECT charge_id, line_id, invoice_id FROM invoice_line_charges"
        before = sorted(conn.execute(links))

        assert [m.version for m in migrate(conn)] == [m.version for m in discover() if m.version >= 4]

        # the links are kept (read through the old name), each charge got a distinct charge_seq
        after = sorted(conn.execute(links))
        assert after == before and len(after) == 2
        seqs = conn.execute(
            "SELECT count(DISTINCT charge_seq), count(*) FROM rated_charges").fetchone()
        assert seqs == (3, 3)
        # issued links stay immutable, and a linked charge cannot be linked again
        for stmt in ("DELETE FROM invoice_line_links",
                     "UPDATE invoice_line_links SET line_id = line_id + 1"):
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute(stmt)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO invoice_line_links SELECT charge_seq, line_id, invoice_id "
                         "FROM invoice_line_links LIMIT 1")
        # numbering continues from the counter without a gap
        conn.execute(
            """INSERT INTO invoices (customer_id, period_start, period_end, currency, minor_units,
                 kind, corrects_invoice_id, subtotal, total)
               VALUES ('c', %s, %s, 'USD', 2, 'correction', %s, 0, 0)""",
            (NOV, NOV.replace(month=12), inv))
        nxt = conn.execute("SELECT invoice_number FROM issue_drafts()").fetchone()[0]
        y, n = number.split("-")
        assert nxt == f"{y}-{int(n) + 1:06d}"
