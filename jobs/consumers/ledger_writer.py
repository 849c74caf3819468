"""The ledger writer: the consumer that feeds the metering job's committed outputs (the ledger
and duplicates topics, read_committed) to the ledger store (``sinks/ledger.py``), batch by batch,
through the one batching loop (``sinks/batchloop.py``). This module is the loop's stage: it parses
records (``schemas/records.py``), applies each batch with its offsets in one transaction, and
dead-letters what cannot be applied."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from pricing.periods import from_epoch_ms
from schemas.config import Aggregation
from schemas.records import (
    EventJson,
    LedgerEvent,
    WindowChange,
    parse_duplicate_count,
    parse_ledger,
)
from sinks.ledger import ApplyResult, Batch, StaleBatchError, WindowKey, apply_batch, load_offsets
from sinks.pricebook_store import PriceBooks

log = logging.getLogger("meterflow.ledger")

Parser = Callable[[Any], Any]  # a kafka-python ConsumerRecord -> item or None

DEAD_LETTER_PAYLOAD_BYTES = 8192  # what a dead letter keeps of the record's value
DEAD_LETTER_KEY_BYTES = 1024


@dataclass(frozen=True)
class TopicRole:
    topic: str
    parse: Parser
    kind: str  # ledger | duplicates


@dataclass
class _Rec:
    """One polled record: its item to apply (None: nothing to apply), or why it cannot be parsed."""

    record: Any
    item: Any = None
    error: str | None = None


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


class LedgerStage:
    """What the consumer loop (sinks/batchloop.py) calls with each poll: parse the records, apply
    them in one transaction with their offsets, and isolate what cannot be applied.

    No poison pills (DESIGN.md §7): a record that does not parse, or that Postgres or the rater
    rejects as data (a NUL character Postgres text cannot hold, a malformed document), goes to
    ``billing.ledger_dead_letters`` with its error, in the transaction that stores the offsets
    past it, and the rest of its batch is applied. A batch that fails as data is bisected into
    halves, each applied in its own transaction with its own offsets (records of a partition stay
    in order), down to the single records that fail. Connection errors are outages, handled by
    the loop (never dead-lettered)."""

    def __init__(self, roles: Sequence[TopicRole], consumer: str,
                 aggregations: Mapping[str, Aggregation]) -> None:
        self.by_topic = {r.topic: r for r in roles}
        self.consumer = consumer
        self.aggregations = aggregations
        self.books = PriceBooks()

    def parse(self, records: Sequence[Any]) -> list[_Rec]:
        out = []
        for msg in records:
            try:
                out.append(_Rec(msg, self.by_topic[msg.topic].parse(msg)))
            except Exception as e:  # noqa: BLE001 — any parse failure is the record's
                out.append(_Rec(msg, error=_error_text(e)))
        return out

    def write(self, conn: psycopg.Connection, polled: Any) -> tuple[ApplyResult, Batch]:
        recs = self.parse(polled.records)
        res = self._write(conn, recs)
        return res, _batch_of(recs)

    def _write(self, conn: psycopg.Connection, recs: Sequence[_Rec]) -> ApplyResult:
        from sinks.batchloop import is_poison

        batch = _batch_of(recs)
        dead = [(r, "parse", r.error) for r in recs if r.error]
        try:
            with conn.transaction():
                res = apply_batch(conn, batch, consumer=self.consumer, books=self.books,
                                  aggregations=self.aggregations)
                if dead:
                    _insert_dead_letters(conn, self.consumer, dead)
                    res.dead_letters += len(dead)
            return res
        except Exception as e:
            if not is_poison(e, conn):
                raise
            if len(recs) == 1:
                log.warning("dead-lettering %s[%d]@%d: %s", recs[0].record.topic,
                            recs[0].record.partition, recs[0].record.offset, _error_text(e))
                with conn.transaction():
                    res = apply_batch(conn, Batch(offsets=batch.offsets, start_offsets=batch.start_offsets,
                                                  dead_on_time=_on_time_window(recs[0].item)),
                                      consumer=self.consumer, books=self.books,
                                      aggregations=self.aggregations)
                    _insert_dead_letters(conn, self.consumer, [(recs[0], "apply", _error_text(e))])
                    res.dead_letters += 1
                return res
            log.warning("a batch of %d records failed as data (%s); isolating the records",
                        len(recs), _error_text(e))
            mid = len(recs) // 2
            return _plus_results(self._write(conn, recs[:mid]), self._write(conn, recs[mid:]))


def _on_time_window(item: Any) -> list[WindowKey]:
    """The window of a dead-lettered on-time event message, when its JSON says (the firing of that
    window counted it, so the writer counts it as read: the window is rated without it)."""
    if not isinstance(item, EventJson):
        return []
    try:
        d = orjson.loads(item.value)
        if (d.get("lateness") or "on_time") != "on_time":
            return []
        key = (str(d["customer_id"]), str(d["meter"]), from_epoch_ms(int(d["window_start_ms"])))
        return [] if "\x00" in key[0] + key[1] else [key]  # text Postgres cannot hold: no window
    except Exception:  # noqa: BLE001 — a document Python cannot read either: its window is unknown
        return []


def _plus_results(a: ApplyResult, b: ApplyResult) -> ApplyResult:
    return ApplyResult(**{f: getattr(a, f) + getattr(b, f) for f in ApplyResult.__dataclass_fields__})


def _batch_of(recs: Sequence[_Rec]) -> Batch:
    """The batch of these records (in poll order: per partition, in offset order), with the
    offsets of every record, applied or not."""
    batch = Batch()
    for r in recs:
        tp = (r.record.topic, r.record.partition)
        batch.start_offsets.setdefault(tp, r.record.offset)
        batch.offsets[tp] = r.record.offset + 1
        item = r.item
        if item is None:
            continue
        if isinstance(item, EventJson):
            batch.event_json.append(item.value)
        elif isinstance(item, LedgerEvent):
            batch.events.append(item)
        elif isinstance(item, WindowChange):
            batch.windows.append(item)
        else:
            batch.duplicates.append(item)
    return batch


def _insert_dead_letters(conn: psycopg.Connection, consumer: str,
                         dead: Sequence[tuple[_Rec, str, str | None]]) -> None:
    rows = []
    for r, stage, error in dead:
        m = r.record
        value = m.value or b""
        key = m.key[:DEAD_LETTER_KEY_BYTES] if m.key is not None else None
        rows.append((consumer, m.topic, m.partition, m.offset, stage, error or "unknown",
                     value[:DEAD_LETTER_PAYLOAD_BYTES], len(value), key))
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO billing.ledger_dead_letters (consumer, kafka_topic, kafka_partition,
                      kafka_offset, stage, error, payload, payload_bytes, record_key)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            rows,
        )


def run_ledger(
    conn: psycopg.Connection | Callable[[], psycopg.Connection],
    *,
    bootstrap_servers: str,
    roles: Sequence[TopicRole],
    consumer: str,
    aggregations: Mapping[str, Aggregation],
    bounded: bool,
    max_batch: int = 20_000,
    poll_timeout_ms: int = 500,
    idle_exit_s: float | None = None,
    on_batch: Callable[[ApplyResult, Batch], None] | None = None,
    stop: Callable[[], bool] | None = None,
    drain_when: Callable[[], bool] | None = None,
    group_id: str | None = None,
    retry: Any = None,
    status: Any = None,
) -> ApplyResult:
    """Consume ``roles``' topics (read_committed) and apply them batch by batch (the loop is
    :class:`sinks.batchloop.Loop`; this module supplies the stage).

    ``conn``: a way to connect (reconnected after an outage), or one connection.
    ``group_id``: join this Kafka consumer group and apply only the partitions it assigns
    (N writers scale out); None: read every partition (the only way for ``bounded`` and
    ``drain_when``).
    ``bounded``: stop once every partition reached the end offset it had when this started.
    ``drain_when``: run like an unbounded writer until it returns True (e.g. the producing job
    has finished), then stop once every partition reached the end offset it had at that moment.
    ``retry``: a :class:`sinks.batchloop.RetryPolicy` (outage backoff and exit); ``status``: a
    :class:`sinks.batchloop.Status` to report to.
    """
    from sinks.batchloop import Loop, Postgres, RetryPolicy, Status

    if isinstance(conn, psycopg.Connection):
        given = conn

        def connect() -> psycopg.Connection:
            if given.closed:
                raise psycopg.OperationalError("the ledger writer's connection was lost")
            return given
    else:
        connect = conn
    status = status or Status(None, consumer=consumer, group_id=group_id)
    pg = Postgres(connect, retry or RetryPolicy(), status, stop=stop)
    stage = LedgerStage(roles, consumer, aggregations)
    total = ApplyResult()

    def on_write(r: tuple[ApplyResult, Batch], polled: Any) -> None:
        nonlocal total
        total = _plus_results(total, r[0])
        status.dead_letters_total += r[0].dead_letters
        if on_batch:
            on_batch(r[0], r[1])

    def offsets(c: psycopg.Connection, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        with c.transaction():
            stored = load_offsets(c, consumer)
        return {k: stored[k] for k in keys if k in stored}

    loop = Loop(bootstrap_servers=bootstrap_servers, topics=[r.topic for r in roles], consumer=consumer,
                write=stage.write, load_offsets=offsets, postgres=pg, group_id=group_id,
                stale_errors=(StaleBatchError,), max_batch=max_batch, poll_timeout_ms=poll_timeout_ms)
    try:
        loop.run(bounded=bounded, stop=stop, drain_when=drain_when, idle_exit_s=idle_exit_s,
                 on_write=on_write)
    finally:
        if not isinstance(conn, psycopg.Connection):
            pg.close()
    return total


def metering_roles(ledger_topic: str, duplicates_topic: str) -> list[TopicRole]:
    """The ledger writer's two topics. The ledger topic is keyed by customer_id (jobs/flink/metering.py
    ``create_kafka_sinks``): every message of a (customer, meter) — its events and its window
    firings — is in one partition, in order, so one writer at a time owns it. The duplicates
    topic is keyed by event_id; its counters are absolute per (event id, epoch) and applied with
    GREATEST, so they need no co-partitioning with the ledger topic: whichever writer owns their
    partition applies them, in any order relative to the ledger."""
    return [
        TopicRole(ledger_topic, lambda m: parse_ledger(m.value), "ledger"),
        TopicRole(duplicates_topic, lambda m: parse_duplicate_count(m.key, m.value), "duplicates"),
    ]
