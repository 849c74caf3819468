"""A fresh, migrated PostgreSQL database per test module (the billing tables are append-only, so
tests cannot clean up after themselves by deleting rows).

Usage::

    from tests.integration.dbutil import fresh_database

    @pytest.fixture(scope="module")
    def settings():
        with fresh_database() as s:     # Settings pointing at a new database mf_test_<random>
            yield s

The stack must be up (``bash scripts/stack.sh up``); when Postgres is unreachable the fixture
skips the test with the reason, unless ``METERFLOW_REQUIRE_STACK=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from schemas.config import Settings, load_settings
from sinks.db import connect
from sinks.migrate import migrate


def _admin_conninfo(settings: Settings) -> str:
    pg = settings.postgres
    return pg.model_copy(update={"database": "postgres"}).conninfo()


@contextmanager
def fresh_database(settings: Settings | None = None, *, keep: bool = False) -> Iterator[Settings]:
    """Create ``mf_test_<random>``, apply all migrations, yield Settings for it, drop it after.

    ``keep=True`` (or ``METERFLOW_KEEP_TEST_DB=1``) leaves the database for inspection.
    """
    base = settings or load_settings()
    name = f"mf_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(_admin_conninfo(base), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        if os.environ.get("METERFLOW_REQUIRE_STACK") == "1":
            raise
        pytest.skip(f"PostgreSQL is not reachable ({e}); run `bash scripts/stack.sh up`")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    s = base.model_copy(update={"postgres": base.postgres.model_copy(update={"database": name})})
    try:
        with connect(s) as conn:
            migrate(conn)
        yield s
    finally:
        if not (keep or os.environ.get("METERFLOW_KEEP_TEST_DB") == "1"):
            with psycopg.connect(_admin_conninfo(base), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
