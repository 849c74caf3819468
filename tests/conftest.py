"""The one conftest of the test suite. Four kinds of tests, one folder each:

* ``tests/unit`` — pure Python, no JVM, no stack;
* ``tests/pipeline`` — the metering job on Flink's embedded mini-cluster, bounded input (marked
  ``pipeline``);
* ``tests/integration`` — ONE adapter against the real Kafka or PostgreSQL of the local stack
  (``scripts/stack.sh up``, docs/STACK.md; marked ``integration``);
* ``tests/e2e`` — jobs and the CLI end to end: the Flink job, ``meterflow`` in a subprocess,
  consumers from Kafka to Postgres, a standalone Flink cluster (marked ``integration`` — they need
  the stack too — and ``e2e``).

Deselect with ``-m "not integration"`` / ``-m "not pipeline"``.

Fixtures for the stack's tests (a fresh, migrated database is created by the superuser; the test
connects as the app role ``meterflow_app``, which owns nothing — tests/integration/dbutil.py):

* ``settings`` — Settings for a private database, dropped after: one per test, or one per test
  module when the module is marked ``pytest.mark.module_database``;
* ``seed`` — override it in a module (module scope) to return ``f(conn)``: it seeds every
  database the module gets, through an autocommit connection, with the real stores
  (``sinks.pricebook_store`` for price books, customers, tax rates; dbutil's helpers use them);
* ``conn`` — an autocommit connection to ``settings``' database;
* ``stack`` — how to reach the stack (started if needed); ``local_cluster`` — a standalone Flink
  cluster on free ports, once per session.

Private Kafka topics come with ``tests.integration.metering_util.private_metering_settings``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tests.integration.dbutil  # noqa: F401 — points libpq at the stack's password file

ROOT = Path(__file__).resolve().parents[1]
STACK_SH = ROOT / "scripts" / "stack.sh"
VENV_BIN = ROOT / ".venv" / "bin"
_TESTS = Path(__file__).resolve().parent
# folder -> markers of every test in it
_MARKERS = {"pipeline": ("pipeline",), "integration": ("integration",), "e2e": ("integration", "e2e")}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: a job or the CLI end to end (tests/e2e; needs the stack)")
    config.addinivalue_line(
        "markers", "module_database: the module's tests share one private database (``settings``)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(str(item.fspath)).resolve().relative_to(_TESTS).parts[0]
        except ValueError:
            continue
        for marker in _MARKERS.get(folder, ()):
            item.add_marker(getattr(pytest.mark, marker))


# --- the stack ---------------------------------------------------------------------------------


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


# --- databases -------------------------------------------------------------------------------


Seed = Callable[..., None]


@pytest.fixture(scope="module")
def seed() -> Seed | None:
    """Override in a module: return ``f(conn)`` that seeds each of its databases (autocommit
    connection), through the real stores."""
    return None


def _private_database(seed: Seed | None) -> Iterator:
    from sinks.db import connect
    from tests.integration.dbutil import fresh_database

    with fresh_database() as s:
        if seed is not None:
            with connect(s, autocommit=True) as c:
                seed(c)
        yield s


@pytest.fixture(scope="module")
def module_settings(seed: Seed | None) -> Iterator:
    """One private, migrated, seeded database for the whole module."""
    yield from _private_database(seed)


@pytest.fixture()
def settings(request: pytest.FixtureRequest, seed: Seed | None) -> Iterator:
    """Settings for a private, migrated, seeded database: the module's
    (``pytest.mark.module_database``) or one of this test's own, dropped after it."""
    if request.node.get_closest_marker("module_database"):
        yield request.getfixturevalue("module_settings")
        return
    yield from _private_database(seed)


@pytest.fixture()
def conn(settings):
    """An autocommit connection to ``settings``' database (run_invoicing needs autocommit)."""
    from sinks.db import connect

    with connect(settings, autocommit=True) as c:
        yield c


# --- a standalone Flink cluster (tests/e2e) ------------------------------------------------------


@dataclass(frozen=True)
class LocalCluster:
    directory: Path
    rest_port: int
    prom_ports: tuple[int, int]
    env: dict[str, str]  # METERFLOW_CLUSTER_* and a PATH on which `meterflow` is the venv's


def _free_pair() -> tuple[int, int]:
    """Two consecutive free ports (the Prometheus reporter takes a port range)."""
    import socket

    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p, p + 1
    raise RuntimeError("no two consecutive free ports")


def cluster_command(cluster: LocalCluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["meterflow", "cluster", *args], cwd=ROOT, env=cluster.env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def local_cluster(stack, request: pytest.FixtureRequest) -> LocalCluster:
    directory = ROOT / ".local" / f"e2e-cluster-{secrets.token_hex(3)}"
    prom = _free_pair()
    ports = {k: free_port() for k in ("REST", "RPC", "BLOB", "TM_RPC", "TM_DATA")}
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["METERFLOW_CLUSTER_DIR"] = str(directory)
    env["METERFLOW_CLUSTER_PROM_PORTS"] = f"{prom[0]}-{prom[1]}"
    env["METERFLOW_CLUSTER_STATE_BACKEND"] = "rocksdb"
    for k, v in ports.items():
        env[f"METERFLOW_CLUSTER_{k}_PORT"] = str(v)
    cluster = LocalCluster(directory, ports["REST"], prom, env)
    up = cluster_command(cluster, "up")
    if up.returncode != 0:
        cluster_command(cluster, "down")
        pytest.fail(f"meterflow cluster up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}", pytrace=False)
    yield cluster
    down = cluster_command(cluster, "down")
    assert down.returncode == 0, down.stderr
    if not request.session.testsfailed:  # keep the logs of a failed session
        shutil.rmtree(directory, ignore_errors=True)
