"""Every command family turns the expected failures into ONE clear line on stderr, a non-zero
exit and no traceback, and changes nothing: Postgres unreachable, the database missing, the
schema not migrated, Kafka unreachable (a topic missing: tests/e2e/test_cli_init.py)."""

from __future__ import annotations

import pytest

from tests.e2e.cli_util import (
    assert_one_clear_line,
    database_exists,
    env_for,
    existing_topics,
    mf,
    private_names,
    unreachable_port,
)
from tests.integration.dbutil import admin_connect, fresh_database

# (command, needs a file argument) — every command that talks to Postgres
PG_COMMANDS = [
    ("db", "migrate"),
    ("credits", "list"),
    ("credits", "grant", "--customer", "acme", "--amount", "1", "--currency", "USD"),
    ("pricebook", "load", "examples/pricebooks/standard-usd.toml"),
    ("customers", "load", "examples/customers.toml"),
    ("taxes", "load", "examples/taxes.toml"),
    ("invoice", "--period", "2026-11", "--quiet"),
    ("reconcile", "--period", "2026-11", "--no-kafka"),
    ("export", "invoices", "--period", "2026-11", "--quiet", "--out", "{tmp}/out.csv"),
    ("rerate", "--reason", "test", "--from", "2026-11-01", "--to", "2026-11-02"),
]
# the long-running jobs refuse a missing database before starting (an unreachable Postgres is
# left to their outage policy, tests/integration/test_ledger_outage.py)
JOB_COMMANDS = [
    ("run", "ledger", "--bounded"),
    ("run", "rerating", "--bounded"),
    ("run", "metering", "--bounded"),
]


def _args(cmd: tuple[str, ...], tmp_path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in cmd]


@pytest.fixture(scope="module")
def missing():
    """Settings naming a database and topics that do not exist."""
    return private_names()


@pytest.mark.parametrize("cmd", [*PG_COMMANDS, ("db", "create"), ("init",)], ids=" ".join)
def test_postgres_unreachable(missing, cmd, tmp_path) -> None:
    port = unreachable_port()
    r = mf(env_for(missing, METERFLOW__POSTGRES__PORT=port), *_args(cmd, tmp_path))
    assert_one_clear_line(r, f"127.0.0.1:{port}", "unreachable")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("cmd", PG_COMMANDS + JOB_COMMANDS, ids=" ".join)
def test_database_missing(missing, cmd, tmp_path) -> None:
    r = mf(env_for(missing), *_args(cmd, tmp_path))
    assert_one_clear_line(
        r, f"database {missing.postgres.database!r} does not exist", "meterflow db create"
    )
    assert not database_exists(missing, missing.postgres.database)
    assert not (tmp_path / "out.csv").exists()
    assert not set(existing_topics(missing)) & {missing.topics.events, missing.topics.late}


@pytest.fixture(scope="module")
def unmigrated():
    """A database that exists but was never migrated (`db create` without `db migrate`)."""
    with fresh_database() as s:
        with admin_connect(s, autocommit=True) as conn:
            conn.execute("DROP SCHEMA billing CASCADE")
        yield s


@pytest.mark.parametrize(
    "cmd",
    [c for c in PG_COMMANDS if c[:2] != ("db", "migrate")] + [("run", "ledger", "--bounded")],
    ids=" ".join,
)
def test_schema_missing(unmigrated, cmd, tmp_path) -> None:
    r = mf(env_for(unmigrated), *_args(cmd, tmp_path))
    assert_one_clear_line(r, "no meterflow schema", "meterflow db migrate")
    with admin_connect(unmigrated) as conn:
        assert (
            conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'billing'").fetchone()[
                0
            ]
            == 0
        )


@pytest.fixture(scope="module")
def migrated():
    """A migrated database; topics of its own (never created: Kafka is unreachable)."""
    with fresh_database() as s:
        yield s.model_copy(update={"topics": private_names(s).topics})


@pytest.mark.parametrize(
    "cmd",
    [
        ("produce", "--count", "5"),
        ("topics", "create"),
        ("reconcile", "--period", "2026-11", "--kafka-timeout", "3"),
        ("run", "rerating", "--bounded"),
        ("run", "metering", "--bounded"),
    ],
    ids=" ".join,
)
def test_kafka_unreachable(migrated, cmd) -> None:
    port = unreachable_port()
    r = mf(env_for(migrated, METERFLOW__KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}"), *cmd)
    assert_one_clear_line(r, f"127.0.0.1:{port}")
    assert "unreachable" in r.stderr


def test_init_with_kafka_unreachable_creates_no_database(missing) -> None:
    port = unreachable_port()
    r = mf(env_for(missing, METERFLOW__KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}"), "init")
    assert_one_clear_line(r, f"127.0.0.1:{port}", "unreachable")
    assert not database_exists(missing, missing.postgres.database)
