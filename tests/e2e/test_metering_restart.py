"""Exactly-once effect (invariant 3): kill the metering job (SIGKILL, mid-run) and restart it from
its latest checkpoint; Postgres must end exactly as after an uninterrupted run on the same input.

The input is on time (disorder within the watermark's bound), so both runs classify every event
the same way and the comparison can be exact: same accepted events, same final windows, same
Σ charges per (customer, meter, period), same duplicate and dead-letter counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.flink.env import latest_checkpoint
from jobs.flink.run import run_ledger_writer, run_metering
from jobs.tools.produce import send
from jobs.tools.synthetic import SyntheticSpec, generate
from schemas.config import REPO_ROOT, Settings, format_duration, load_settings
from sinks.db import connect
from tests.integration.metering_util import load_prices, private_metering_settings, read_topic

pytestmark = pytest.mark.integration

CUSTOMERS = [f"cust-{i:05d}" for i in range(20)]
SPEC = SyntheticSpec(
    count=30_000, seed=5, customers=len(CUSTOMERS), meters=("api_calls", "storage_gb_hours"),
    start=datetime(2026, 11, 3, tzinfo=UTC), span=timedelta(hours=8),
    out_of_order_share=0.05, max_disorder=timedelta(seconds=2), duplicate_share=0.02, invalid_share=0.01,
)
TIME = dict(window_size="1h", allowed_lateness="1h", max_out_of_orderness="5s", idleness_timeout="30s")


def env_for(settings: Settings, log_dir: Path | None = None) -> dict[str, str]:
    """The environment overrides that make a subprocess load exactly these settings."""
    env = dict(os.environ)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        env["FLINK_LOG_DIR"] = str(log_dir)  # its own Flink log, not the shared one
    t, tp, f = settings.time, settings.topics, settings.flink
    env.update({
        "METERFLOW__KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "METERFLOW__KAFKA__CONSUMER_GROUP": settings.kafka.consumer_group,
        "METERFLOW__POSTGRES__DATABASE": settings.postgres.database,
        "METERFLOW__POSTGRES__PORT": str(settings.postgres.port),
        "METERFLOW__FLINK__CHECKPOINT_DIR": f.checkpoint_dir,
        "METERFLOW__FLINK__CHECKPOINT_INTERVAL": format_duration(f.checkpoint_interval),
        "PYTHONPATH": str(REPO_ROOT),
    })
    for k in ("events", "dlq", "late", "ledger", "duplicates"):
        env[f"METERFLOW__TOPICS__{k.upper()}"] = getattr(tp, k)
    for k in ("window_size", "allowed_lateness", "max_out_of_orderness", "idleness_timeout"):
        env[f"METERFLOW__TIME__{k.upper()}"] = format_duration(getattr(t, k))
    return env


@contextmanager
def streaming_job(settings: Settings, workdir: Path, **env_extra: str) -> Iterator[subprocess.Popen]:
    """``python -m jobs.flink.metering`` (unbounded) in its own session with these settings, logging to
    ``workdir/job.log``; the body must leave it running (checked); SIGKILLed at the end."""
    env = env_for(settings, workdir / "flink-log")
    env.update(env_extra)
    log = (workdir / "job.log").open("wb")
    job = subprocess.Popen([sys.executable, "-m", "jobs.flink.metering"], cwd=REPO_ROOT, env=env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield job
        assert job.poll() is None, (workdir / "job.log").read_text()[-3000:]
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
        log.close()


def committed_records(settings: Settings, topic: str) -> int:
    """How many records of ``topic`` a read_committed consumer can see now (Σ last stable offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    kc = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, isolation_level="read_committed")
    try:
        tps = [TopicPartition(topic, p) for p in kc.partitions_for_topic(topic) or ()]
        return sum(kc.end_offsets(tps).values()) if tps else 0
    finally:
        kc.close()


def snapshot(settings: Settings, exclude: str = "") -> dict[str, object]:
    with connect(settings) as conn:
        return {
            "events": conn.execute(
                "SELECT md5(string_agg(event_id || ':' || quantity::text, ',' ORDER BY event_id)), count(*) "
                "FROM usage_events WHERE customer_id <> %s", (exclude,)).fetchone(),
            "windows": conn.execute(
                """SELECT md5(string_agg(concat_ws(':', customer_id, meter, window_start, quantity, event_count),
                                         ',' ORDER BY customer_id, meter, window_start)), count(*)
                     FROM (SELECT DISTINCT ON (customer_id, meter, window_start) *
                             FROM aggregated_usage WHERE customer_id <> %s
                            ORDER BY customer_id, meter, window_start, revision DESC) w""", (exclude,)
            ).fetchone(),
            "charges": sorted(conn.execute(
                "SELECT customer_id, meter, period_start, sum(amount) FROM rated_charges "
                "WHERE customer_id <> %s GROUP BY 1, 2, 3", (exclude,)).fetchall()),
            "duplicates": conn.execute("SELECT coalesce(sum(duplicates), 0) FROM duplicate_counts").fetchone()[0],
            "rating_errors": conn.execute(
                "SELECT count(*) FROM rating_errors WHERE customer_id <> %s", (exclude,)).fetchone()[0],
        }


SENTINEL = "cust-sentinel"


def sentinels(settings: Settings) -> None:
    """A recent event on every partition: in a streaming run it moves the watermark past every
    window of the input, so they all fire without the end-of-input of a bounded run."""
    from kafka import KafkaProducer

    now = datetime.now(UTC).replace(microsecond=0)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    for p in range(settings.topics.partitions):
        doc = {"event_id": f"sentinel-{p}", "event_time": now.isoformat().replace("+00:00", "Z"),
               "customer_id": SENTINEL, "meter": "api_calls", "quantity": 1}
        producer.send(settings.topics.events, value=json.dumps(doc).encode(), partition=p)
    producer.flush()
    producer.close()


def committed_progress(settings: Settings) -> tuple[int, int]:
    """(accepted events, distinct windows fired) committed on the ledger topic so far, sentinel excluded."""
    rows = [r for r in read_topic(settings, settings.topics.ledger) if r["customer_id"] != SENTINEL]
    events = {r["event_id"] for r in rows if r["kind"] == "event"}
    windows = {(r["customer_id"], r["meter"], r["window_start_ms"]) for r in rows if r["kind"] == "window"}
    return len(events), len(windows)


def start_job(settings: Settings, log_dir: Path, *extra: str) -> subprocess.Popen:
    log = (log_dir / "client.log")
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "jobs.flink.metering", *extra], cwd=REPO_ROOT,
                            env=env_for(settings, log_dir), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill(job: subprocess.Popen) -> None:
    os.killpg(job.pid, signal.SIGKILL)  # the client and its Flink JVM
    job.wait(timeout=60)


def test_killing_the_job_and_restarting_from_its_checkpoint_changes_nothing(tmp_path: Path) -> None:
    """Both attempts run streaming: a sentinel event per partition closes every window. (The
    bounded case: test_a_killed_bounded_run_restored_from_its_checkpoint_finishes_that_run.)"""
    records = list(generate(SPEC))
    kinds = Counter(r.kind for r in records)
    with private_metering_settings(**TIME) as clean, private_metering_settings(**TIME) as killed:
        for s in (clean, killed):
            load_prices(s, CUSTOMERS)
            send(s, records, progress=False)
            sentinels(s)

        run_metering(clean, bounded=True)
        expected = snapshot(clean, exclude=SENTINEL)
        assert expected["events"][1] == kinds["valid"]
        assert expected["duplicates"] == kinds["duplicate"]
        want = (expected["events"][1], expected["windows"][1])

        killed = killed.model_copy(update={"flink": killed.flink.model_copy(update={
            "checkpoint_interval": timedelta(milliseconds=500)})})
        first = start_job(killed, tmp_path / "first")
        deadline = time.monotonic() + 240
        progress_at_kill = (0, 0)
        while time.monotonic() < deadline and first.poll() is None:
            # kill once a checkpoint has committed some output: mid-run, with state to restore
            if committed_records(killed, killed.topics.ledger) and latest_checkpoint(killed.flink.checkpoint_dir):
                kill(first)
                progress_at_kill = committed_progress(killed)
                break
            time.sleep(0.2)
        assert first.returncode == -signal.SIGKILL, "the first attempt ended on its own"
        assert progress_at_kill[0] < want[0], "the first attempt had already committed everything"

        second = start_job(killed, tmp_path / "second", "--restore", "latest")
        try:
            deadline = time.monotonic() + 300
            progress = progress_at_kill
            while time.monotonic() < deadline and second.poll() is None and progress != want:
                time.sleep(3)
                progress = committed_progress(killed)
            assert second.poll() is None, (tmp_path / "second" / "client.log").read_text()[-3000:]
            assert progress == want
        finally:
            kill(second)
        run_ledger_writer(killed, bounded=True)

        assert snapshot(killed, exclude=SENTINEL) == expected
        # every dead letter exactly once; on a mismatch, name the source records concerned
        dlq, dlq_clean = read_topic(killed, killed.topics.dlq), read_topic(clean, clean.topics.dlq)
        dead = {(r["src_partition"], r["src_offset"]) for r in dlq}
        dead_clean = {(r["src_partition"], r["src_offset"]) for r in dlq_clean}
        assert len(dlq) == len(dlq_clean) == kinds["invalid"], (
            f"missing {sorted(dead_clean - dead)[:20]}, extra {sorted(dead - dead_clean)[:20]}, "
            f"progress at kill {progress_at_kill}")


# Events that arrive while a killed bounded run waits to be restored: hours after SPEC's.
LATER = SyntheticSpec(
    count=4_000, seed=6, customers=len(CUSTOMERS), meters=("api_calls", "storage_gb_hours"),
    start=datetime(2026, 11, 3, 10, tzinfo=UTC), span=timedelta(hours=2),
    out_of_order_share=0.05, max_disorder=timedelta(seconds=2), duplicate_share=0.02, invalid_share=0.01,
)


def meterflow(settings: Settings, log_dir: Path, *args: str) -> subprocess.Popen:
    """``meterflow <args>`` (the CLI) in its own session with these settings."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cli.app", *args], cwd=REPO_ROOT,
                            env=env_for(settings, log_dir), stdout=(log_dir / "client.log").open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def reconciled(settings: Settings) -> list[str]:
    from jobs.batch.reconcile import run_reconcile

    with connect(settings) as conn:
        rep = run_reconcile(conn, settings, "2026-11", record=False)
    return [str(m) for m in rep.mismatches]


def test_a_killed_bounded_run_restored_from_its_checkpoint_finishes_that_run(tmp_path: Path) -> None:
    """docs/OPERATIONS.md, "A bounded run was killed": `meterflow run metering --bounded` is
    SIGKILLed after a checkpoint; `meterflow run metering --bounded --restore latest` must finish
    THAT run (every window fired, the same charges as an uninterrupted run, reconcile passes),
    also when the restored run is itself killed and restored, and events written meanwhile are
    left to the next bounded run, which also matches."""
    records, later = list(generate(SPEC)), list(generate(LATER))
    kinds = Counter(r.kind for r in records)
    with private_metering_settings(**TIME) as clean, private_metering_settings(**TIME) as killed:
        for s in (clean, killed):
            load_prices(s, CUSTOMERS)
            send(s, records, progress=False)

        run_metering(clean, bounded=True)
        expected_first = snapshot(clean)
        assert expected_first["events"][1] == kinds["valid"]
        send(clean, later, progress=False)
        run_metering(clean, bounded=True)
        expected = snapshot(clean)
        assert reconciled(clean) == []

        killed = killed.model_copy(update={"flink": killed.flink.model_copy(update={
            "checkpoint_interval": timedelta(milliseconds=500)})})
        first = meterflow(killed, tmp_path / "first", "run", "metering", "--bounded")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            # kill once a checkpoint has committed some output: mid-run, with state to restore
            if committed_records(killed, killed.topics.ledger) and latest_checkpoint(killed.flink.checkpoint_dir):
                kill(first)
                break
            time.sleep(0.2)
        assert first.returncode == -signal.SIGKILL, (tmp_path / "first" / "client.log").read_text()[-3000:]
        assert committed_progress(killed)[1] < expected_first["windows"][1], "the killed run had fired every window"

        send(killed, later, progress=False)  # arrives before the restore: not part of the killed run
        first_job = latest_checkpoint(killed.flink.checkpoint_dir).parent
        # the restored run is killed too, once it has a checkpoint of its own: its state holds the
        # marker split (jobs/metering.create_kafka_source), the next restore must still finish
        second = meterflow(killed, tmp_path / "second", "run", "metering", "--bounded", "--restore", "latest")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and second.poll() is None:
            chk = latest_checkpoint(killed.flink.checkpoint_dir)
            if chk is not None and chk.parent != first_job:
                kill(second)
                break
            time.sleep(0.2)
        assert second.returncode == -signal.SIGKILL, (
            "the restored run ended before its first checkpoint: "
            + (tmp_path / "second" / "client.log").read_text()[-3000:])
        third = meterflow(killed, tmp_path / "third", "run", "metering", "--bounded", "--restore", "latest")
        try:
            rc = third.wait(timeout=600)
        except subprocess.TimeoutExpired:
            kill(third)
            raise AssertionError("the restored bounded run did not finish: "
                                 + (tmp_path / "third" / "client.log").read_text()[-3000:]) from None
        assert rc == 0, (tmp_path / "third" / "client.log").read_text()[-3000:]
        assert snapshot(killed) == expected_first
        dlq, dlq_clean = read_topic(killed, killed.topics.dlq), read_topic(clean, clean.topics.dlq)
        assert len({(r["src_partition"], r["src_offset"]) for r in dlq}) == len(dlq) == kinds["invalid"]

        run_metering(killed, bounded=True)  # the next run reads what arrived meanwhile
        assert snapshot(killed) == expected
        assert len(read_topic(killed, killed.topics.dlq)) == len(dlq_clean)
        assert reconciled(killed) == []


def test_restoring_a_checkpoint_in_the_other_mode_is_refused(tmp_path: Path) -> None:
    """A bounded run's checkpoint keeps its stop offsets (a streaming restore would stop reading
    there for good); a streaming run's has none (a bounded restore would never end): both are
    refused with one line and nothing runs."""
    from jobs.flink.run import BOUND_FILE

    settings = load_settings()
    cdir = tmp_path / "checkpoints"
    bounded_chk, streaming_chk = cdir / "job-b" / "chk-3", cdir / "job-s" / "chk-7"
    for chk in (bounded_chk, streaming_chk):
        chk.mkdir(parents=True)
        (chk / "_metadata").write_bytes(b"x")
    (bounded_chk.parent / BOUND_FILE).write_text(json.dumps(
        {"topic": settings.topics.events, "stop_offsets": {"0": 5}}))
    env = {**os.environ, "METERFLOW__FLINK__CHECKPOINT_DIR": str(cdir), "PYTHONPATH": str(REPO_ROOT)}
    for args, says in (((str(bounded_chk),), "taken by a bounded run"),
                       (("--bounded", str(streaming_chk)), "not taken by a bounded run"),
                       (("--bounded", str(tmp_path / "nothing")), "not a checkpoint")):
        *flags, path = args
        r = subprocess.run([sys.executable, "-m", "cli.app", "run", "metering", *flags, "--restore", path],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert says in " ".join(r.stderr.split()) and "Traceback" not in r.stderr, r.stderr
