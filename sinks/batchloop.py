"""One batching, ``read_committed`` Kafka consumer loop for the stages that apply a topic to
PostgreSQL with their offsets in the same transaction (the ledger writer,
jobs/consumers/ledger_writer.py; re-rating, jobs/consumers/rerating.py).

Why Postgres holds the offsets, and what Kafka's group is for. A stage applies a batch and
stores the next offset of every partition in ``billing.ledger_offsets`` in ONE transaction, so a
batch is applied exactly once whatever crashes. To run N instances, Kafka's consumer-group
assignment hands each a disjoint set of partitions; the group's own offsets are never used:

- on assignment, a partition is paused until the loop has read its offset from Postgres and
  seeked there (``auto_offset_reset`` never decides);
- on revocation (another instance joined or died), records already polled for the partition
  are dropped, never applied;
- a stage's write takes a Postgres advisory lock per (consumer, topic, partition) and refuses a
  batch that starts before the stored offset (:class:`sinks.ledger.StaleBatchError`): when a
  revocation reaches an instance while it is applying, the new owner waits for that transaction
  and then finds its own batch stale; the loop re-seeks to Postgres's offsets and goes on. Kafka's
  group only spreads the work; Postgres decides what is applied.

Outages. A connection error is not the batch's fault: the loop reconnects with exponential
backoff, says so (a log line per attempt and :class:`Status`), re-seeks every owned partition to
the offsets Postgres holds (the batch in flight may or may not have committed), and after
``outage_exit_after`` raises :class:`PostgresOutage` so the process exits non-zero and a
supervisor restarts it, rather than idling with charges frozen.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import psycopg

log = logging.getLogger("meterflow.consumer")

R = TypeVar("R")

# SQLSTATE classes of errors that are the data's fault (the record can never be applied):
# 22 data exception (e.g. 22P05: a NUL character), 23 integrity constraint, 54 program limit
# exceeded (e.g. an index row too large).
POISON_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
# Python errors a record's content raises while it is applied (a float quantity, a missing field)
POISON_PY_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, KeyError, ArithmeticError, UnicodeError)
# a concurrent writer rolled the transaction back: apply the same batch again at once
RETRY_SQLSTATES = frozenset({"40001", "40P01"})


def is_outage(e: BaseException, conn: psycopg.Connection | None) -> bool:
    """Postgres is unreachable or unusable right now (not the batch's fault)."""
    if not isinstance(e, psycopg.Error):
        return False
    if conn is None or conn.closed or conn.broken:
        return True
    state = getattr(e, "sqlstate", None)
    if state is None:
        return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)
    # 08 connection, 53 insufficient resources (disk full, too many connections), 57 operator
    # intervention (admin shutdown, cannot connect now, statement timeout), 58 system error
    return state[:2] in {"08", "53", "57", "58"}


def is_poison(e: BaseException, conn: psycopg.Connection | None) -> bool:
    """The batch holds a record that can never be applied (isolate it and dead-letter it)."""
    if is_outage(e, conn):
        return False
    if isinstance(e, psycopg.Error):
        # client-side too: psycopg refuses a NUL in a text parameter with a DataError, no sqlstate
        state = getattr(e, "sqlstate", None) or ""
        return state[:2] in POISON_SQLSTATE_CLASSES or isinstance(
            e, psycopg.DataError | psycopg.IntegrityError)
    return isinstance(e, POISON_PY_ERRORS)


class PostgresOutage(RuntimeError):
    """Postgres stayed unreachable longer than ``outage_exit_after``."""


@dataclass
class Status:
    """What an operator (or a test) can observe of a running writer: rewritten as a JSON file
    (atomically) whenever its state changes, and at most once a second on progress."""

    path: Path | None
    consumer: str = ""
    group_id: str | None = None
    pid: int = field(default_factory=os.getpid)
    state: str = "starting"  # starting | running | postgres_outage | stopped | failed
    postgres_outage_since: str | None = None
    last_error: str | None = None
    outage_retries_total: int = 0
    reconnects_total: int = 0
    batches_total: int = 0
    records_total: int = 0
    dead_letters_total: int = 0
    stale_batches_total: int = 0
    rebalances_total: int = 0
    idle_checks_total: int = 0  # ``SELECT 1`` of an idle loop (see Loop.idle_check_s)
    partitions: list[str] = field(default_factory=list)
    cpu_s: float = 0.0  # this process's CPU time (user + system) when the status was written
    updated_at: str = ""
    _last_write: float = 0.0
    # the rebalance callbacks write from kafka-python's IO thread
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, *, force: bool = True, **changes: Any) -> None:
        with self._lock:
            self._set(force, changes)

    def _set(self, force: bool, changes: dict[str, Any]) -> None:
        for k, v in changes.items():
            setattr(self, k, v)
        now = time.monotonic()
        if self.path is None or (not force and now - self._last_write < 1.0):
            return
        self._last_write = now
        self.updated_at = datetime.now(UTC).isoformat()
        self.cpu_s = round(time.process_time(), 3)
        data = {k: getattr(self, k) for k in self.__dataclass_fields__
                if not k.startswith("_") and k != "path"}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            tmp.replace(self.path)
        except OSError as e:  # the status must never stop the writer
            log.warning("cannot write status file %s: %s", self.path, e)


@dataclass(frozen=True)
class RetryPolicy:
    outage_exit_after_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


class _Assignment:
    """The partitions this instance owns, as the group coordinator's callbacks report them (they
    run on kafka-python's IO thread: record and pause only, the loop does the rest)."""

    def __init__(self, kc: Any, status: Status) -> None:
        self._kc = kc
        self._status = status
        self._lock = threading.Lock()
        self.owned: set[Any] = set()
        self.pending: set[Any] = set()  # owned, not yet seeked to Postgres's offsets (paused)

    def added(self, tps: Iterable[Any]) -> None:
        tps = set(tps)
        with self._lock:
            self.owned |= tps
            self.pending |= tps
        if tps:
            try:
                self._kc.pause(*tps)
            except Exception as e:  # noqa: BLE001 — a later rebalance took them again
                log.debug("pause %s: %s", tps, e)

    def removed(self, tps: Iterable[Any]) -> None:
        with self._lock:
            self.owned -= set(tps)
            self.pending -= set(tps)

    def all_pending(self) -> None:
        with self._lock:
            self.pending |= self.owned
        try:
            self._kc.pause(*self.pending)
        except Exception as e:  # noqa: BLE001 — a partition revoked meanwhile cannot be paused
            log.debug("pause: %s", e)

    def take_pending(self) -> set[Any]:
        with self._lock:
            return set(self.pending)

    def seeked(self, tps: Iterable[Any]) -> None:
        with self._lock:
            self.pending -= set(tps)

    def usable(self, tp: Any) -> bool:
        with self._lock:
            return tp in self.owned and tp not in self.pending

    def snapshot(self) -> list[Any]:
        with self._lock:
            return sorted(self.owned)

    # ConsumerRebalanceListener, duck-typed into a subclass in _listener()
    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", _names(revoked))
        self.removed(revoked)
        self._status.rebalances_total += 1
        self._status.set(partitions=_names(self.snapshot()))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", _names(assigned))
        self.added(assigned)
        self._status.set(partitions=_names(self.snapshot()))

    def on_partitions_lost(self, lost: Any) -> None:
        log.warning("partitions lost (evicted from the group): %s", _names(lost))
        self.removed(lost)
        self._status.set(partitions=_names(self.snapshot()))


def _names(tps: Iterable[Any]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)]


def _listener(a: _Assignment) -> Any:
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            a.on_partitions_revoked(revoked)

        def on_partitions_assigned(self, assigned: Any) -> None:
            a.on_partitions_assigned(assigned)

        def on_partitions_lost(self, lost: Any) -> None:
            a.on_partitions_lost(lost)

    return Listener()


class Postgres:
    """A connection that is re-opened after an outage, and the retry loop around every use."""

    def __init__(self, connect: Callable[[], psycopg.Connection], policy: RetryPolicy,
                 status: Status, *, stop: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._connect = connect
        self.policy = policy
        self.status = status
        self._stop = stop
        self._clock = clock
        self._sleep = sleep
        self.conn: psycopg.Connection | None = None
        self.last_ok = clock()  # when Postgres last answered (or this object was made)

    def idle_s(self) -> float:
        """Seconds since Postgres last answered one of :meth:`run`'s calls."""
        return self._clock() - self.last_ok

    def check(self) -> None:
        """``SELECT 1`` under the same retry policy as any other use: an outage that begins
        while no data flows is reported, and ends the process past ``outage_exit_after``, just as
        one that hits a write does."""
        self.run(_select_1)
        self.status.idle_checks_total += 1
        self.status.set(force=False)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 — closing a broken connection may fail in any way
                pass
            self.conn = None

    def run(self, fn: Callable[[psycopg.Connection], R]) -> tuple[bool, R | None]:
        """``(True, fn(conn))`` once it succeeds. An outage is retried until Postgres is back:
        then ``(False, None)`` when ``fn`` had started on a connection that broke (its
        transaction may or may not have committed: the caller re-reads Postgres's offsets), or
        ``fn``'s result when only the connect had failed. Raises :class:`PostgresOutage` past the
        limit; any other error propagates."""
        first_failure: float | None = None
        delay = self.policy.backoff_initial_s
        started = False
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect()
                    if first_failure is not None:
                        self.status.reconnects_total += 1
                if started:  # reconnected after fn had begun: do not run it blindly again
                    self._recovered(first_failure)
                    return False, None
                started = True
                out = fn(self.conn)
                self.last_ok = self._clock()
                self._recovered(first_failure)
                return True, out
            except Exception as e:
                if not is_outage(e, self.conn):
                    raise
                now = self._clock()
                first_failure = now if first_failure is None else first_failure
                down = now - first_failure
                self.status.outage_retries_total += 1
                self.status.set(state="postgres_outage", last_error=_err(e),
                                postgres_outage_since=self.status.postgres_outage_since
                                or datetime.now(UTC).isoformat())
                self.close()
                left = self.policy.outage_exit_after_s - down
                if left <= 0:
                    raise PostgresOutage(
                        f"PostgreSQL unreachable for {down:.0f} s (limit {self.policy.outage_exit_after_s:.0f} s): "
                        f"{_err(e)}") from e
                wait = min(delay, left)
                log.warning("PostgreSQL unavailable for %.1f s (%s); reconnecting in %.1f s "
                            "(exit after %.0f s)", down, _err(e), wait, self.policy.outage_exit_after_s)
                self._sleep(wait)
                delay = min(delay * 2, self.policy.backoff_max_s)
                if self._stop is not None and self._stop():
                    raise PostgresOutage("stopped during a PostgreSQL outage") from e

    def _recovered(self, first_failure: float | None) -> None:
        if first_failure is not None:
            log.warning("PostgreSQL is back after %.1f s", self._clock() - first_failure)
            self.status.set(state="running", postgres_outage_since=None)


def _select_1(conn: psycopg.Connection) -> None:
    conn.execute("SELECT 1")
    conn.rollback()  # leave no transaction open: a stage's next write begins its own


def _err(e: BaseException) -> str:
    """One line: psycopg's connection errors span several."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:2000]


@dataclass(frozen=True)
class Polled:
    """What one loop iteration read: records in partition order, and per partition the offset of
    the first record and the next offset to read."""

    records: list[Any]
    start_offsets: dict[tuple[str, int], int]
    next_offsets: dict[tuple[str, int], int]


class StaleBatch(Exception):
    """Raised by a stage's write when Postgres's offsets are past the batch (another instance
    applied it): the loop re-seeks to Postgres's offsets."""


WriteFn = Callable[[psycopg.Connection, Polled], R]
OffsetsFn = Callable[[psycopg.Connection, Sequence[tuple[str, int]]], dict[tuple[str, int], int]]


@dataclass
class Loop(Generic[R]):
    """The consumer loop; a stage supplies ``write`` (apply one :class:`Polled` in one
    transaction that also stores its offsets) and ``load_offsets``."""

    bootstrap_servers: str
    topics: Sequence[str]
    consumer: str
    write: WriteFn[R]
    load_offsets: OffsetsFn
    postgres: Postgres
    group_id: str | None = None  # None: this instance reads every partition (bounded/drain mode)
    stale_errors: tuple[type[BaseException], ...] = (StaleBatch,)
    max_batch: int = 20_000
    poll_timeout_ms: int = 500
    # keep polling up to this long (or ``max_batch`` records, or until a poll comes back empty)
    # before writing: re-rating folds a burst of late events for one window into one revision
    linger_s: float = 0.0
    session_timeout_ms: int = 10_000
    # with no data to write, the loop would not touch Postgres at all, so an outage that starts
    # while the topic is quiet would go unseen (status "running", no exit): an idle loop checks
    # Postgres once this long after it last answered
    idle_check_s: float = 5.0
    kafka_properties: dict[str, Any] = field(default_factory=dict)

    def run(self, *, bounded: bool = False, stop: Callable[[], bool] | None = None,
            drain_when: Callable[[], bool] | None = None, idle_exit_s: float | None = None,
            on_write: Callable[[R, Polled], None] | None = None) -> None:
        """Read and write until ``stop()``; ``bounded``: until every partition reached the end
        offset it had at start; ``drain_when``: like unbounded until it returns True, then until
        the end offsets of that moment. Both read every partition (no group)."""
        from kafka import KafkaConsumer, TopicPartition

        if (bounded or drain_when is not None) and self.group_id is not None:
            raise ValueError("bounded and drain modes read every partition: no consumer group")
        status = self.postgres.status
        kc = KafkaConsumer(**{
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            "auto_offset_reset": "earliest",
            "max_poll_records": self.max_batch,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 16 * 1024 * 1024,
            # a fetch the broker parks for want of committed data returns after this at the latest
            # (kafka-python's default, 500 ms, is added to an alert's latency: docs/ALERTS.md)
            "fetch_max_wait_ms": 100,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(self.session_timeout_ms // 4, 100),
            **self.kafka_properties,
        })
        assignment = _Assignment(kc, status)
        try:
            if self.group_id is None:
                tps = [TopicPartition(t, p) for t in self.topics for p in _partitions_for(kc, t)]
                kc.assign(tps)
                assignment.added(tps)
                status.set(partitions=_names(tps))
            else:
                kc.subscribe(list(self.topics), listener=_listener(assignment))
                tps = []
            status.set(state="running", consumer=self.consumer, group_id=self.group_id)
            end: dict[Any, int] | None = None
            draining = bounded
            expected: dict[Any, int] = {}  # the next offset each owned partition must yield
            last_data = time.monotonic()
            while True:
                if stop and stop():
                    break
                pending = assignment.take_pending()
                if pending:
                    self._seek(kc, assignment, pending, expected)
                    continue  # pending again if an outage came in between
                if draining and end is None:
                    end = kc.end_offsets(tps)
                if not draining and drain_when is not None and drain_when():
                    end, draining = kc.end_offsets(tps), True
                if draining and end is not None and all(kc.position(tp) >= end[tp] for tp in tps):
                    break
                got = kc.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_batch)
                if got and self.linger_s > 0:
                    self._linger(kc, got, stop, end if draining else None, tps)
                polled = self._usable(got, assignment, expected)
                if polled is None:
                    if idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                        break
                    if self.postgres.idle_s() >= self.idle_check_s:
                        self.postgres.check()
                    continue
                last_data = time.monotonic()
                result = self._write(polled, assignment)
                if result is None:
                    continue
                for (t, p), nxt in polled.next_offsets.items():
                    expected[TopicPartition(t, p)] = nxt
                status.set(force=False, batches_total=status.batches_total + 1,
                           records_total=status.records_total + len(polled.records))
                if on_write:
                    on_write(result[0], polled)
            status.set(state="stopped")
        except KeyboardInterrupt:
            status.set(state="stopped")
            raise
        except BaseException as e:
            status.set(state="failed", last_error=_err(e))
            raise
        finally:
            kc.close()

    def _linger(self, kc: Any, got: dict[Any, list[Any]], stop: Callable[[], bool] | None,
                end: dict[Any, int] | None, tps: Sequence[Any]) -> None:
        """Add further polls to ``got`` (in place, in offset order per partition) for up to
        ``linger_s``; a poll that comes back empty, the end offsets of a bounded run, a full batch
        or ``stop()`` end it early."""
        n = sum(len(v) for v in got.values())
        deadline = time.monotonic() + self.linger_s
        while n < self.max_batch and not (stop and stop()):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return
            if end is not None and all(kc.position(tp) >= end[tp] for tp in tps):
                return
            more = kc.poll(timeout_ms=min(self.poll_timeout_ms, left_ms),
                           max_records=self.max_batch - n)
            if not more:
                return
            for tp, msgs in more.items():
                got.setdefault(tp, []).extend(msgs)
                n += len(msgs)

    def _seek(self, kc: Any, assignment: _Assignment, pending: set[Any],
              expected: dict[Any, int]) -> None:
        keys = sorted((tp.topic, tp.partition) for tp in pending)
        ok, stored = self.postgres.run(lambda conn: self.load_offsets(conn, keys))
        if not ok or stored is None:
            return
        done = []
        for tp in pending:
            off = stored.get((tp.topic, tp.partition))
            try:
                if off is None:
                    kc.seek_to_beginning(tp)
                    expected[tp] = 0
                else:
                    kc.seek(tp, off)
                    expected[tp] = off
                kc.resume(tp)
                done.append(tp)
            except Exception as e:  # noqa: BLE001 — revoked meanwhile
                log.debug("seek %s: %s", tp, e)
        assignment.seeked(done)

    def _usable(self, got: dict[Any, list[Any]], assignment: _Assignment,
                expected: dict[Any, int]) -> Polled | None:
        """The polled records of partitions this instance still owns and has seeked, from where
        Postgres says (records fetched before a seek or a revocation are dropped)."""
        records: list[Any] = []
        starts: dict[tuple[str, int], int] = {}
        nexts: dict[tuple[str, int], int] = {}
        for tp, msgs in got.items():
            if not msgs or not assignment.usable(tp):
                continue
            exp = expected.get(tp)
            if exp is not None:
                msgs = [m for m in msgs if m.offset >= exp]
                if not msgs:
                    continue
            records.extend(msgs)
            starts[(tp.topic, tp.partition)] = msgs[0].offset
            nexts[(tp.topic, tp.partition)] = msgs[-1].offset + 1
        return Polled(records, starts, nexts) if records else None

    def _write(self, polled: Polled, assignment: _Assignment) -> tuple[R] | None:
        for attempt in range(10):
            try:
                ok, out = self.postgres.run(lambda conn: self.write(conn, polled))
            except self.stale_errors as e:
                log.warning("%s; re-reading the offsets from Postgres", e)
                self.postgres.status.stale_batches_total += 1
                assignment.all_pending()
                return None
            except psycopg.Error as e:
                if getattr(e, "sqlstate", None) in RETRY_SQLSTATES and attempt < 9:
                    log.warning("batch rolled back by a concurrent writer (%s); retrying", _err(e))
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise
            if not ok:  # an outage hit the write: Postgres's offsets decide where to go on
                assignment.all_pending()
                return None
            return (out,)  # type: ignore[return-value]  # ok: `out` is write()'s R (which may be None)
        raise AssertionError("unreachable")


def _partitions_for(kc: Any, topic: str) -> list[int]:
    deadline = time.monotonic() + 30
    while True:
        parts = kc.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} does not exist (is the stack up?)")
        time.sleep(0.2)
