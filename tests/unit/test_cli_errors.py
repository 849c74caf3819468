"""cli.options turns the expected Postgres failures into one line that names the database."""

from __future__ import annotations

import psycopg
import pytest

from cli.options import postgres_problem
from schemas.config import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings.model_validate({"postgres": {"database": "ledger_x", "port": 15999}})


def test_a_missing_database_is_one_line_naming_it_and_the_command_that_creates_it(settings: Settings) -> None:
    e = psycopg.OperationalError('connection failed: FATAL:  database "ledger_x" does not exist')
    line = postgres_problem(e, settings)
    assert line is not None and "\n" not in line
    # the settings' own port (an environment override, e.g. CI's, wins over the constructor's)
    assert line.startswith(f"database 'ledger_x' does not exist on 127.0.0.1:{settings.postgres.port}")
    assert "meterflow db create" in line


def test_a_database_without_the_schema_is_one_line_naming_it(settings: Settings) -> None:
    e = psycopg.errors.UndefinedTable('relation "rated_charges" does not exist')
    line = postgres_problem(e, settings)
    assert line is not None and line.startswith("database 'ledger_x' has no meterflow schema yet")
    assert "meterflow db migrate" in line
