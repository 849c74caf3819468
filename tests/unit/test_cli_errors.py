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


def _kafka_at(servers: str) -> Settings:
    """Settings naming these servers whatever the environment says (CI sets
    METERFLOW__KAFKA__BOOTSTRAP_SERVERS, which beats the constructor's value)."""
    s = Settings()
    return s.model_copy(update={"kafka": s.kafka.model_copy(update={"bootstrap_servers": servers})})


def test_kafka_refusing_connections_is_said_at_once_in_one_line_naming_every_server() -> None:
    import socket
    import time

    from cli.options import kafka_problem
    from jobs.tools.topics import KafkaUnreachable, check_reachable

    ports = []
    for _ in range(2):  # two ports nobody listens on: bound, then closed
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    servers = ",".join(f"127.0.0.1:{p}" for p in ports)
    t = time.monotonic()
    with pytest.raises(KafkaUnreachable) as caught:
        check_reachable(_kafka_at(servers))
    assert time.monotonic() - t < 5  # refused: no client bootstrap timeout (10–30 s) is waited for
    line = kafka_problem(caught.value, _kafka_at(servers))
    assert line is not None and "\n" not in line
    assert line.startswith(f"Kafka is unreachable at {servers} (") and all(str(p) in line for p in ports)
    assert "meterflow stack status" in line


def test_one_listening_bootstrap_server_is_enough_for_the_preflight() -> None:
    import socket

    from jobs.tools.topics import check_reachable

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    with socket.create_server(("127.0.0.1", 0)) as server:
        check_reachable(_kafka_at(f"127.0.0.1:{dead},127.0.0.1:{server.getsockname()[1]}"))
