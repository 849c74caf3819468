"""Least privilege (docs/OPERATIONS.md, "Database roles"; V007): every meterflow command
connects as ``meterflow_app``, which owns nothing, cannot skip or disable the immutability
triggers, and may change only the rows that are mutable by design. The analyst stays read-only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from sinks.db import connect
from tests.integration.dbutil import admin_connect

pytestmark = pytest.mark.integration
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DENIED = psycopg.errors.InsufficientPrivilege


@pytest.fixture()
def app(settings):
    with connect(settings, autocommit=True) as conn:
        assert conn.info.user == "meterflow_app"
        yield conn


def _seed(app) -> uuid.UUID:
    """An event and a charge, written by the app role itself (appending is its job)."""
    cid = uuid.uuid4()
    app.execute("""INSERT INTO usage_events (event_id, customer_id, meter, event_time, ingestion_time,
                     quantity, window_start) VALUES ('e1', 'c', 'api_calls', %s, %s, 5, %s)""", (NOV, NOV, NOV))
    app.execute(
        """INSERT INTO rated_charges (charge_id, customer_id, meter, period_start, window_start, window_end,
                  revision, currency, quantity_delta, amount, price_book_id, price_version, calculation, cause)
           VALUES (%s, 'c', 'api_calls', %s, %s, %s, 1, 'USD', 5, 0.5, 'pb', 'v1', '{}', 'window_fired')""",
        (cid, NOV, NOV, NOV.replace(hour=1)))
    return cid


def test_the_app_role_is_no_superuser_and_owns_nothing(app) -> None:
    row = app.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                      "WHERE rolname = current_user").fetchone()
    assert row == (False, False, False, False)
    owned = app.execute("""SELECT c.relname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                            WHERE r.rolname = 'meterflow_app'""").fetchall()
    assert owned == []
    assert app.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'billing'"
                       ).fetchone() == ("meterflow_owner",)


def test_the_app_role_cannot_skip_the_immutability_triggers(app) -> None:
    with pytest.raises(DENIED, match="session_replication_role"):
        app.execute("SET session_replication_role = replica")
    with pytest.raises(DENIED):
        app.execute("ALTER TABLE usage_events DISABLE TRIGGER USER")


@pytest.mark.parametrize("statement", [
    "UPDATE usage_events SET quantity = quantity + 1",
    "DELETE FROM usage_events",
    "TRUNCATE usage_events",
    "UPDATE rated_charges SET amount = amount + 1",
    "DELETE FROM rated_charges",
    "TRUNCATE rated_charges",
    "UPDATE aggregated_usage SET quantity = 0",
    "DELETE FROM schema_migrations",
    "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'x', 'x')",
])
def test_the_app_role_cannot_change_history(app, statement: str) -> None:
    _seed(app)
    with pytest.raises(DENIED):
        app.execute(statement)
    assert app.execute("SELECT sum(amount), count(*) FROM rated_charges").fetchone() == (0.5, 1)


@pytest.mark.parametrize("statement", [
    "ALTER TABLE rated_charges ADD COLUMN x int",
    "DROP TABLE rated_charges",
    "DROP TRIGGER rated_charges_immutable ON rated_charges",
    "CREATE TABLE billing.mine (x int)",
    "DROP FUNCTION billing.forbid_change() CASCADE",
    "ALTER SCHEMA billing RENAME TO b2",
])
def test_the_app_role_cannot_alter_or_drop_anything(app, statement: str) -> None:
    with pytest.raises(DENIED):
        app.execute(statement)


def test_the_analyst_role_stays_read_only(settings) -> None:
    with admin_connect(settings, autocommit=True) as su:
        su.execute("SET ROLE meterflow_analyst")
        assert su.execute("SELECT count(*) FROM v_current_usage").fetchone() == (0,)
        for stmt in ("INSERT INTO customers (customer_id, price_book_id, currency) VALUES ('x', 'pb', 'USD')",
                     "UPDATE ledger_offsets SET next_offset = 0", "DELETE FROM invoices"):
            with pytest.raises(DENIED):
                su.execute(stmt)


def test_a_database_migrated_before_v007_is_handed_to_the_owner_by_one_superuser_migrate(stack, tmp_path) -> None:
    """An existing database (migrated by the superuser, before the roles): the owner role's
    `db migrate` is refused with one line saying what to do; the superuser's applies V007 and
    hands everything to meterflow_owner; from then on the owner migrates and the app runs."""
    import subprocess
    import sys

    from schemas.config import REPO_ROOT
    from sinks.migrate import discover, migrate
    from tests.integration.dbutil import cli_env, fresh_database

    old = tmp_path / "old"
    old.mkdir()
    for m in discover():
        if m.version < 7:
            (old / m.path.name).write_text(m.sql)
    with fresh_database() as s:
        with admin_connect(s, autocommit=True) as su:
            su.execute("DROP SCHEMA billing CASCADE")
            migrate(su, old)

        def db_migrate(**env: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "cli.app", "db", "migrate"], cwd=REPO_ROOT,
                                  env={**cli_env(s), "PYTHONPATH": str(REPO_ROOT), **env},
                                  capture_output=True, text=True, timeout=120)

        r = db_migrate()
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "METERFLOW__POSTGRES__MIGRATION_USER=postgres meterflow db migrate" in " ".join(r.stderr.split())
        r = db_migrate(METERFLOW__POSTGRES__MIGRATION_USER="postgres")
        assert r.returncode == 0 and "applied V007__least_privilege" in r.stdout, r.stdout + r.stderr
        r = db_migrate()
        assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
        with connect(s, autocommit=True) as app:
            assert app.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'usage_events'"
                               ).fetchone() == ("meterflow_owner",)
            _seed(app)
            with pytest.raises(DENIED):
                app.execute("DELETE FROM usage_events")
