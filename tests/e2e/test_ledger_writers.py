"""The ledger writer scales out (issue 12 item 5): N `meterflow run ledger` processes join one
Kafka consumer group and each applies the partitions it is assigned, offsets in Postgres. Kill
one with SIGKILL mid-run: another takes its partitions over, and Postgres ends exactly as a
single writer leaves it on the same input (nothing applied twice, nothing skipped)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.flink.run import run_ledger_writer
from schemas.config import REPO_ROOT, Settings
from tests.e2e.test_rerating_support import assert_sigma_equals_rate, snapshot, utc
from tests.integration.dbutil import cli_env, fresh_database
from tests.integration.ledger_input import (
    H,
    caught_up,
    duplicate_counts,
    ledger_input,
    produce_keyed,
    stored_offsets,
)
from tests.integration.metering_util import load_prices, private_metering_settings

pytestmark = pytest.mark.integration

NOV = utc(2026, 11, 1)
CUSTOMERS = [f"cust-{i}" for i in range(8)]


def writer_env(settings: Settings, status: Path, **extra: str) -> dict[str, str]:
    env = cli_env(settings)
    env.update({
        "METERFLOW__TOPICS__LEDGER": settings.topics.ledger,
        "METERFLOW__TOPICS__DUPLICATES": settings.topics.duplicates,
        "METERFLOW__LEDGER__STATUS_FILE": str(status),
        "METERFLOW__LEDGER__MAX_BATCH": "25",  # many small transactions: the kill lands mid-run
        **extra,
    })
    if os.environ.get("PGPASSWORD"):
        env["PGPASSWORD"] = os.environ["PGPASSWORD"]
    return env


def start_writer(settings: Settings, status: Path, log: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.app", "run", "ledger"], cwd=REPO_ROOT,
                            env=writer_env(settings, status, **extra), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(cond, what: str, procs=(), timeout: float = 240.0) -> None:
    """Poll ``cond`` (a generous timeout guards the suite, it is not what the test checks)."""
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None, f"a writer exited with {p.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def ledger_partitions(status: dict, topic: str) -> set[str]:
    return {p for p in status.get("partitions", []) if p.startswith(topic + "[")}


def test_two_writers_one_added_then_one_killed_mid_run_leave_postgres_as_one_writer_does(tmp_path) -> None:
    with private_metering_settings(partitions=4) as settings:
        load_prices(settings, CUSTOMERS)
        topics = [settings.topics.ledger, settings.topics.duplicates]
        ledger = settings.topics.ledger

        def offsets_of(parts: set[str]) -> dict[str, int]:
            now = stored_offsets(settings)
            return {p: now.get((ledger, int(p.split("[")[1].rstrip("]"))), 0) for p in parts}

        first = ledger_input(CUSTOMERS, NOV, windows=4, per_window=3, seed=7, tag="a-")
        produce_keyed(settings, ledger, first)
        sa, sb = tmp_path / "a.json", tmp_path / "b.json"
        a = start_writer(settings, sa, tmp_path / "a.log")
        b = None
        try:
            wait_for(lambda: len(ledger_partitions(read_status(sa), ledger)) == 4, "A to own every partition", (a,))
            wait_for(lambda: caught_up(settings, topics), "the first input to be applied", (a,))
            before = stored_offsets(settings)
            second = ledger_input(CUSTOMERS, NOV + 4 * H, windows=20, per_window=6, seed=8, tag="b-")
            produce_keyed(settings, ledger, second)
            wait_for(lambda: stored_offsets(settings) != before, "A to apply some of the second input", (a,))
            # a writer added mid-run: the group splits the partitions (A's are revoked mid-run)
            b = start_writer(settings, sb, tmp_path / "b.log")
            wait_for(lambda: len(ledger_partitions(read_status(sa), ledger)) == 2
                     and len(ledger_partitions(read_status(sb), ledger)) == 2,
                     "the two writers to share the partitions", (a, b))
            a_parts = ledger_partitions(read_status(sa), ledger)
            mark = offsets_of(a_parts)
            third = ledger_input(CUSTOMERS, NOV + 24 * H, windows=40, per_window=6, seed=9, tag="c-")
            produce_keyed(settings, ledger, third)
            produce_keyed(settings, settings.topics.duplicates, duplicate_counts(second + third))
            wait_for(lambda: offsets_of(a_parts) != mark, "A to apply more of its partitions", (a, b))
            # A killed mid-run: B takes A's partitions over and applies everything
            a.send_signal(signal.SIGKILL)
            a.wait(timeout=30)
            assert not caught_up(settings, topics), "the input was applied before the kill"
            wait_for(lambda: len(ledger_partitions(read_status(sb), ledger)) == 4,
                     "writer B to own every partition", (b,))
            wait_for(lambda: caught_up(settings, topics), "everything to be applied", (b,))
        finally:
            for p in (a, b):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in (a, b):
                try:
                    if p is not None:
                        p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        assert_sigma_equals_rate(settings)

        # the same input, one writer, another database: the same rows
        with fresh_database(settings) as single:
            load_prices(single, CUSTOMERS)
            run_ledger_writer(single, bounded=True)
            assert snapshot(settings) == snapshot(single)
        from sinks.db import connect

        with connect(settings) as conn:  # the duplicates topic was applied too, latest count kept
            n, top = conn.execute("SELECT count(*), min(duplicates) FROM duplicate_counts "
                                  "WHERE source = 'stream'").fetchone()
        assert n == len(duplicate_counts(second + third)) // 2 and top == 2


def test_offset_locks_are_per_partition_so_writers_of_one_consumer_work_in_parallel(settings) -> None:
    """Writer A holds partition 0 of consumer `w` inside its batch transaction: writer B applies
    partition 1 of the same consumer meanwhile, and cannot take partition 0 until A commits; then
    B's batch for partition 0, which starts before A's stored offset, is refused."""
    import psycopg

    from sinks.db import connect
    from sinks.ledger import StaleBatchError, _store_offsets, check_offsets

    with connect(settings) as a, connect(settings) as b:
        b.execute("SET lock_timeout = '200ms'")
        b.commit()
        with a.transaction():
            check_offsets(a, "w", {("t", 0): 0})
            with b.transaction():  # another partition: not blocked by A
                check_offsets(b, "w", {("t", 1): 0})
                _store_offsets(b, "w", {("t", 1): 5})
            with pytest.raises(psycopg.errors.LockNotAvailable), b.transaction():
                check_offsets(b, "w", {("t", 0): 0})  # A's partition: waits for A
            _store_offsets(a, "w", {("t", 0): 10})
        with pytest.raises(StaleBatchError), b.transaction():
            check_offsets(b, "w", {("t", 0): 3})  # A applied up to 10 meanwhile
        with b.transaction():
            check_offsets(b, "w", {("t", 0): 10, ("t", 1): 5})
