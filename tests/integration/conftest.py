"""Integration tests run against the real local stack (Kafka KRaft + PostgreSQL), started by
``scripts/stack.sh up`` (see docs/STACK.md). Every test under tests/integration/ is marked
``integration``; deselect them with ``-m "not integration"``.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import tests.integration.dbutil  # noqa: F401 — points libpq at the stack's password file

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "scripts" / "stack.sh"
_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class StackInfo:
    """How to reach a running stack."""

    stack_dir: Path
    kafka_port: int
    pg_port: int
    bootstrap_servers: str  # "127.0.0.1:<port>"
    pg_conninfo: str  # psycopg conninfo for database `billing` as the superuser `postgres`
    topic_events: str
    topic_dlq: str
    topic_late: str
    env: dict[str, str]  # environment that points scripts/stack.sh at this stack


def run_stack(
    command: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run ``scripts/stack.sh <command>`` with ``env``; output captured as text."""
    return subprocess.run(
        ["bash", str(STACK_SH), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stack_info(env: dict[str, str]) -> StackInfo:
    kafka_port = int(env.get("METERFLOW_KAFKA_PORT", "19092"))
    pg_port = int(env.get("METERFLOW_PG_PORT", "15432"))
    return StackInfo(
        stack_dir=Path(env.get("METERFLOW_STACK_DIR", str(ROOT / ".local" / "stack"))),
        kafka_port=kafka_port,
        pg_port=pg_port,
        bootstrap_servers=f"127.0.0.1:{kafka_port}",
        pg_conninfo=f"host=127.0.0.1 port={pg_port} dbname=billing user=postgres",
        topic_events=env.get("METERFLOW_TOPIC_EVENTS", "usage-events"),
        topic_dlq=env.get("METERFLOW_TOPIC_DLQ", "usage-events-dlq"),
        topic_late=env.get("METERFLOW_TOPIC_LATE", "usage-events-late"),
        env=env,
    )


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack() -> StackInfo:
    """The shared dev stack (ports from the METERFLOW_* env vars), started if needed.

    It is left running after the session: it is shared with the developer and other test runs.
    """
    env = dict(os.environ)
    result = run_stack("up", env)
    if result.returncode != 0:
        pytest.fail(
            f"scripts/stack.sh up failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return stack_info(env)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture()
def settings():
    """Settings for a fresh, migrated database of its own, dropped after the test: created and
    migrated by the superuser, connecting as the app role ``meterflow_app`` (which owns
    nothing). Modules that need seeded data or another scope define their own ``settings``
    fixture."""
    from tests.integration.dbutil import fresh_database

    with fresh_database() as s:
        yield s
