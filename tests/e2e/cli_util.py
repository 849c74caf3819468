"""Running ``python -m cli.app`` as a subprocess, the way a user runs ``meterflow``, and the
assertions every "clear failure" test shares."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg

from schemas.config import Settings, load_settings
from tests.conftest import free_port
from tests.integration.dbutil import SUPERUSER, cli_env

ROOT = Path(__file__).resolve().parents[2]


def mf(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """``cli_env`` plus a wide terminal (rich tables unwrapped) and the topic names."""
    env = cli_env(settings)
    t = settings.topics
    env.update(
        {
            "COLUMNS": "250",
            "METERFLOW__TOPICS__EVENTS": t.events,
            "METERFLOW__TOPICS__DLQ": t.dlq,
            "METERFLOW__TOPICS__LATE": t.late,
            "METERFLOW__TOPICS__LEDGER": t.ledger,
            "METERFLOW__TOPICS__DUPLICATES": t.duplicates,
            "METERFLOW__TOPICS__PARTITIONS": str(t.partitions),
        }
    )
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    env.update(extra)
    return env


def private_names(settings: Settings | None = None, partitions: int = 2) -> Settings:
    """Settings with a database and topics of their own that do not exist yet."""
    s = settings or load_settings()
    tag = secrets.token_hex(4)
    topics = s.topics.model_copy(
        update={
            "events": f"nc-{tag}-events",
            "dlq": f"nc-{tag}-dlq",
            "late": f"nc-{tag}-late",
            "ledger": f"nc-{tag}-ledger",
            "duplicates": f"nc-{tag}-dups",
            "partitions": partitions,
        }
    )
    return s.model_copy(
        update={
            "topics": topics,
            "postgres": s.postgres.model_copy(update={"database": f"mf_nc_{tag}"}),
        }
    )


def unreachable_port() -> str:
    return str(free_port())


def assert_one_clear_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, one line on stderr that contains every needle."""
    assert r.returncode != 0, f"exit 0:\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def database_exists(settings: Settings, name: str) -> bool:
    admin = settings.postgres.model_copy(
        update={"database": "postgres", "user": SUPERUSER, "password": None}
    )
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def drop_database(settings: Settings) -> None:
    from psycopg import sql

    admin = settings.postgres.model_copy(
        update={"database": "postgres", "user": SUPERUSER, "password": None}
    )
    with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(settings.postgres.database)
            )
        )


def existing_topics(settings: Settings) -> set[str]:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, client_id="nc-test"
    )
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def delete_topics(settings: Settings) -> None:
    from kafka.admin import KafkaAdminClient

    from jobs.tools.topics import topic_specs

    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, client_id="nc-test"
    )
    try:
        present = [t for t in topic_specs(settings) if t in set(admin.list_topics())]
        if present:
            admin.delete_topics(present)
    finally:
        admin.close()
