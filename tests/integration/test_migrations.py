"""Migrations on the real PostgreSQL: applying them twice is a no-op, a changed migration is
refused, and the append-only tables reject UPDATE, DELETE and TRUNCATE (invariant 4)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from sinks.db import connect
from sinks.migrate import MigrationError, discover, migrate
from tests.integration.dbutil import fresh_database

pytestmark = pytest.mark.integration
NOV = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def settings():
    with fresh_database() as s:  # already migrated once
        yield s


def test_applying_the_migrations_twice_is_a_no_op(settings) -> None:
    with connect(settings) as conn:
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
    with connect(settings) as conn, pytest.raises(MigrationError, match="changed after it was applied"):
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
    with connect(settings) as conn:
        cid = _seed_charge(conn)
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            conn.execute(statement, (cid,))
        conn.rollback()
        assert conn.execute("SELECT amount FROM rated_charges WHERE charge_id = %s", (cid,)).fetchone()[0] == 0.5


@pytest.mark.parametrize("table", ["usage_events", "aggregated_usage", "rated_charges"])
def test_the_database_rejects_truncating_history(settings, table: str) -> None:
    with connect(settings) as conn:
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            conn.execute(f"TRUNCATE {table}")  # noqa: S608 - fixed table names
        conn.rollback()


def test_an_update_that_changes_nothing_is_a_harmless_no_op(settings) -> None:
    """So an idempotent replay of an upsert never fails."""
    with connect(settings) as conn:
        cid = _seed_charge(conn)
        conn.execute("UPDATE rated_charges SET amount = amount WHERE charge_id = %s", (cid,))
        conn.commit()
