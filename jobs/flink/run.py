"""``meterflow run metering|ledger``: the metering job on the embedded mini-cluster, with the
ledger writer that applies its outputs to PostgreSQL.

``--bounded``: the Flink job reads up to the offsets present at start and finishes (flushing every
window); the ledger writer applies what the job commits WHILE it runs (Kafka transactions commit
at every checkpoint), and once the job has finished it drains the rest and stops. Without it both
run until interrupted (Ctrl-C). The ledger writer runs in a background thread either way.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.consumers.ledger_writer import metering_roles, run_ledger
from schemas.config import Settings
from sinks.db import connect
from sinks.ledger import ApplyResult

log = logging.getLogger("meterflow.run")
LEDGER_CONSUMER = "metering-ledger"


@dataclass
class MeteringRun:
    seconds_flink: float  # from the job's submission until it finished
    seconds_ledger: float  # bounded runs: how long the ledger writer ran on after the job finished
    ledger: ApplyResult


def ledger_status(settings: Settings, consumer: str = LEDGER_CONSUMER, group_id: str | None = None):
    """The writer's status file: ``[ledger] status_file``, else one per process under
    .local/ledger-status/ (docs/OPERATIONS.md, "Ledger writers")."""
    from schemas.config import REPO_ROOT
    from sinks.batchloop import Status

    path = settings.ledger.status_file or str(
        REPO_ROOT / ".local" / "ledger-status" / f"{consumer}-{os.getpid()}.json")
    return Status(Path(path), consumer=consumer, group_id=group_id)


def ledger_group_id(settings: Settings) -> str:
    """The ledger writers' Kafka consumer group: ``[ledger] group_id``, by default one per
    database and ledger topic (the writers of one deployment share it, nothing else does)."""
    return settings.ledger.group_id or (
        f"meterflow-ledger.{settings.postgres.database}.{settings.topics.ledger}")


def _sync_meters(settings: Settings) -> None:
    """``billing.meters`` from this writer's configuration (sinks/meters.py), before it rates
    anything. Best effort: an outage is the writer loop's to retry, and a database not migrated
    to V009 yet has no such table — neither may stop the writer."""
    import psycopg

    from sinks.meters import sync_meters

    try:
        with connect(settings, application_name="meterflow-ledger") as conn:
            sync_meters(conn, settings.meters)
    except psycopg.Error as e:
        log.warning("billing.meters not synced from the configuration: %s",
                    str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def run_ledger_writer(settings: Settings, *, bounded: bool, stop=None, on_batch=None,
                      drain_when=None, group: bool | None = None, status=None) -> ApplyResult:
    """The ledger writer. Streaming (neither ``bounded`` nor ``drain_when``) it joins the consumer
    group ``[ledger] group_id`` and applies the partitions the group assigns it, so N of them
    scale out; bounded or draining it reads every partition. Postgres outages are retried and,
    past ``[ledger] outage_exit_after``, raise :class:`sinks.batchloop.PostgresOutage`."""
    from sinks.batchloop import RetryPolicy

    if group is None:
        group = not bounded and drain_when is None
    group_id = ledger_group_id(settings) if group else None
    ls = settings.ledger
    _sync_meters(settings)
    return run_ledger(
        lambda: connect(settings, application_name="meterflow-ledger", jit=False),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        roles=metering_roles(settings.topics.ledger, settings.topics.duplicates),
        consumer=LEDGER_CONSUMER,
        aggregations=settings.meter_aggregations,
        bounded=bounded,
        max_batch=ls.max_batch,
        stop=stop,
        on_batch=on_batch,
        drain_when=drain_when,
        group_id=group_id,
        retry=RetryPolicy(outage_exit_after_s=ls.outage_exit_after.total_seconds(),
                          backoff_max_s=ls.retry_backoff_max.total_seconds()),
        status=status or ledger_status(settings, group_id=group_id),
    )


def end_offsets(settings: Settings) -> dict[int, int]:
    """The events topic's current end offset per partition."""
    from kafka import KafkaConsumer, TopicPartition

    kc = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        topic = settings.topics.events
        tps = [TopicPartition(topic, p) for p in sorted(kc.partitions_for_topic(topic) or ())]
        return {tp.partition: off for tp, off in kc.end_offsets(tps).items()}
    finally:
        kc.close()


def commit_group_offsets(settings: Settings, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` of the events topic for the metering job's consumer group."""
    if not offsets:
        return
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    kc = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers,
                       group_id=settings.kafka.consumer_group, enable_auto_commit=False)
    try:
        topic = settings.topics.events
        kc.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    finally:
        kc.close()


class RestoreError(ValueError):
    """A checkpoint cannot be restored the way it was asked for; the message says how instead."""


RESTORE_KEY = "execution.state-recovery.path"  # set by jobs.flink.env.with_restore
BOUND_FILE = "meterflow-bound.json"  # in a bounded run's checkpoint folder: the run's stop offsets


def _job_checkpoint_folder(settings: Settings, job_id: str) -> Path | None:
    """Where Flink writes this job's ``chk-N`` folders, when that is a local path."""
    cdir = settings.flink.config.get("execution.checkpointing.dir", settings.flink.checkpoint_dir)
    if cdir.startswith("file:"):
        from urllib.parse import urlparse

        cdir = urlparse(cdir).path
    elif "://" in cdir:
        return None  # remote checkpoint storage: a bounded restore needs a local bound record
    return Path(cdir).resolve() / job_id


@dataclass(frozen=True)
class Bound:
    """What a bounded run records next to its checkpoints (``BOUND_FILE``)."""

    stop_offsets: dict[int, int]
    # the run's source state holds a split of the bound marker topic (it, or a run it was
    # restored from, subscribed to it): see jobs.flink.metering.create_kafka_source
    marker_in_state: bool = False


def record_bound(settings: Settings, job_id: str, bound: Bound) -> None:
    """Write the bounded run's stop offsets next to its checkpoints (atomically, synced), so a
    restore of any of them finishes the SAME run: reads up to, and commits, the same offsets."""
    folder = _job_checkpoint_folder(settings, job_id)
    if folder is None:
        log.warning("checkpoints are not on a local path: a bounded run's bound is not recorded, "
                    "so its checkpoints cannot be restored with --bounded")
        return
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"topic": settings.topics.events, "marker_in_state": bound.marker_in_state,
           "stop_offsets": {str(p): o for p, o in sorted(bound.stop_offsets.items())}}
    tmp = folder / (BOUND_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(folder / BOUND_FILE)


def recorded_bound(settings: Settings, checkpoint: Path) -> Bound | None:
    """The stop offsets of the bounded run that took ``checkpoint`` (``<dir>/<job id>/chk-N``),
    or None when it was not taken by a bounded run (or by one that predates the record)."""
    f = checkpoint / BOUND_FILE if (checkpoint / BOUND_FILE).is_file() else checkpoint.parent / BOUND_FILE
    if not f.is_file():
        return None
    doc = json.loads(f.read_text(encoding="utf-8"))
    if doc.get("topic") != settings.topics.events:
        raise RestoreError(f"{checkpoint} is a checkpoint of a run that read topic {doc.get('topic')!r}, "
                           f"not {settings.topics.events!r}")
    return Bound({int(p): int(o) for p, o in doc["stop_offsets"].items()}, bool(doc.get("marker_in_state")))


def _restore_plan(settings: Settings, bounded: bool) -> Bound | None:
    """For a restore (``with_restore`` applied): the bound to finish, or an error when the mode
    does not match the checkpoint. A bounded run's state keeps its stop offsets, so a streaming
    restore of it would stop reading there for good; a streaming run's state has none, so a
    "bounded" restore of it would never end."""
    from urllib.parse import unquote, urlparse

    uri = settings.flink.config.get(RESTORE_KEY)
    if not uri:
        return None
    path = Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
    bound = recorded_bound(settings, path)
    if bounded and bound is None:
        raise RestoreError(
            f"{path} was not taken by a bounded run (`meterflow run metering --bounded`): "
            "restore it without --bounded")
    if not bounded and bound is not None:
        raise RestoreError(
            f"{path} was taken by a bounded run: finish that run with "
            "`meterflow run metering --bounded --restore ...`, then start the streaming job")
    return bound


def ensure_bound_marker(settings: Settings, timeout_s: float = 30) -> None:
    """Create the (empty, one-partition) bound marker topic of bounded runs when missing."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from jobs.flink.metering import bound_marker_topic

    name = bound_marker_topic(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers,
                             client_id="meterflow-topics", request_timeout_ms=10_000)
    try:
        if name not in set(admin.list_topics()):
            try:
                admin.create_topics([NewTopic(name, 1, 1)])
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            d = admin.describe_topics([name])
            if d and d[0].get("error_code", 0) == 0 and d[0].get("partitions") and all(
                    p.get("leader", p.get("leader_id", -1)) >= 0 for p in d[0]["partitions"]):
                return
            time.sleep(0.2)
    finally:
        admin.close()


def check_restore(settings: Settings, *, bounded: bool, restore: str | None) -> None:
    """Refuse a restore that cannot work (no checkpoint there, or one of the other mode) before
    anything is touched: a usage error, told before the database or Kafka is looked at."""
    from jobs.flink.env import with_restore

    if restore is None:
        return
    try:
        _restore_plan(with_restore(settings, restore), bounded)
    except FileNotFoundError as e:
        raise RestoreError(str(e)) from None


def run_metering(settings: Settings, *, bounded: bool, parallelism: int | None = None,
                 on_batch=None, restore: str | None = None) -> MeteringRun:
    """``restore`` of a bounded run's checkpoint (with ``bounded``) finishes THAT run: it reads up
    to the stop offsets recorded when the run started (its split state keeps them anyway), fires
    every window and commits the consumer group at those offsets, exactly as if it had never
    been interrupted; events written since are read by the next run."""
    from jobs.flink.env import with_restore
    from jobs.flink.metering import build_job, submit
    from jobs.tools.topics import ensure_topics

    ensure_topics(settings)
    try:
        settings = with_restore(settings, restore)
    except FileNotFoundError as e:
        raise RestoreError(str(e)) from None
    restored = _restore_plan(settings, bounded)
    # a restored bounded run subscribes to the marker unless its state already holds it (then
    # the marker missing from the subscription is the partition change that ends the source)
    marker = restored is not None and not restored.marker_in_state
    if marker:
        ensure_bound_marker(settings)
    stop = restored.stop_offsets if restored is not None else (end_offsets(settings) if bounded else None)
    t_env, outputs, sinks = build_job(settings, bounded=bounded, parallelism=parallelism, stop_offsets=stop,
                                      restore_marker=marker)
    t0 = time.monotonic()
    result = submit(t_env, outputs, sinks)
    if bounded:
        client = result.get_job_client()
        if client is not None:
            record_bound(settings, str(client.get_job_id()),
                         Bound(stop or {}, marker_in_state=restored is not None))
        return _bounded(settings, result, stop or {}, t0, on_batch)
    return _streaming(settings, result, t0, on_batch)


class LedgerWriterFailed(RuntimeError):
    """The ledger writer stopped while the metering job was running: nothing would be charged."""


@dataclass
class _Outcome:
    """What the ledger-writer and job-wait threads leave for the caller's thread to act on."""

    ledger: ApplyResult | None = None  # the writer returned
    error: BaseException | None = None  # the writer raised (re-raised in the caller's thread)
    job_error: BaseException | None = None  # the job's wait() raised
    job_done: bool = False

    def start_writer(self, write: Callable[[], ApplyResult], then: Callable[[], None] | None) -> threading.Thread:
        """Run the ledger writer in a daemon thread: its result or error here, then ``then()``."""

        def run() -> None:
            try:
                self.ledger = write()
            except BaseException as e:  # noqa: BLE001 — re-raised in the caller's thread
                self.error = e
            finally:
                if then is not None:
                    then()

        th = threading.Thread(target=run, name="ledger-writer", daemon=True)
        th.start()
        return th

    def start_job_wait(self, result: Any, then: Callable[[], None]) -> None:
        """Wait for the Flink job in a daemon thread: its error here, ``job_done``, then ``then()``."""

        def run() -> None:
            try:
                result.wait()
            except BaseException as e:  # noqa: BLE001 — re-raised in the caller's thread
                self.job_error = e
            finally:
                self.job_done = True
                then()

        threading.Thread(target=run, name="flink-job-wait", daemon=True).start()

    def result(self, t_flink: float, t_ledger: float) -> MeteringRun:
        if self.error is not None:
            raise LedgerWriterFailed(f"the ledger writer stopped: {self.error}") from self.error
        if self.ledger is None:
            raise LedgerWriterFailed("the ledger writer stopped without a result")
        return MeteringRun(t_flink, t_ledger, self.ledger)


def _streaming(settings: Settings, result, t0: float, on_batch) -> MeteringRun:
    """The job and the ledger writer run until Ctrl-C, the job ends, or the writer dies. A dead
    writer (e.g. Postgres down past ``[ledger] outage_exit_after``) cancels the job and ends the
    command with an error: a job whose outputs nobody applies would freeze charges silently."""
    stop = threading.Event()
    done = threading.Event()  # the job ended or the writer stopped
    out = _Outcome()

    th = out.start_writer(lambda: run_ledger_writer(settings, bounded=False, stop=stop.is_set,
                                                    on_batch=on_batch), done.set)
    out.start_job_wait(result, done.set)
    try:
        while not done.wait(0.5):
            pass
        if out.error is not None or not th.is_alive() and not out.job_done:
            log.error("the ledger writer stopped (%s); cancelling the metering job", out.error)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        if not out.job_done:
            _cancel(result)
        stop.set()
        th.join(timeout=30)
    if out.error is None and out.job_error is not None:
        raise out.job_error
    t1 = time.monotonic()
    return out.result(t1 - t0, 0.0)


def _cancel(result) -> None:
    client = result.get_job_client()
    if client is not None:
        try:
            client.cancel().result()
        except Exception as e:  # noqa: BLE001 — it may have ended meanwhile
            log.debug("cancel: %s", e)


def _bounded(settings: Settings, result, stop_offsets: dict[int, int], t0: float,
             on_batch) -> MeteringRun:
    """The job runs to its stop offsets while the ledger writer applies each committed checkpoint's
    output; when the job is done the writer drains what is left and stops."""
    finished = threading.Event()  # the job is done: drain to the end offsets of now, then stop
    abort = threading.Event()  # the job failed: stop at once
    out = _Outcome()

    th = out.start_writer(lambda: run_ledger_writer(settings, bounded=False, stop=abort.is_set,
                                                    drain_when=finished.is_set, on_batch=on_batch), None)
    job_done = threading.Event()
    out.start_job_wait(result, job_done.set)
    try:
        while not job_done.wait(0.5):
            if not th.is_alive():  # the writer died while the job runs: nothing would be applied
                _cancel(result)
                raise LedgerWriterFailed(f"the ledger writer stopped: {out.error}") from out.error
        if out.job_error is not None:
            raise out.job_error
    except BaseException:
        abort.set()
        if not job_done.is_set():
            _cancel(result)
        th.join(timeout=60)
        raise
    # The job read exactly up to `stop_offsets`: record that as the consumer group's position, so
    # the next bounded run starts there (Flink commits offsets only on checkpoint notifications,
    # which the end of a bounded job does not always deliver; a re-read would count again).
    commit_group_offsets(settings, stop_offsets)
    t1 = time.monotonic()
    finished.set()
    th.join()
    return out.result(t1 - t0, time.monotonic() - t1)
