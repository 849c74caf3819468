"""The dead-letter copier: the metering job's rejections (the ``usage-events-dlq`` topic,
read_committed) into ``billing.dead_letters`` (V009), so analysts count rejections per period and
reason in Postgres (``billing.v_rejections``) instead of on Kafka.

A small consumer of its own (``meterflow run dead-letters``) rather than a third topic of the
ledger writer: the ledger writer's batches are about rating and locks, a dead letter is neither;
keeping them apart keeps the writer's hot path as it is and lets the copier lag or stop without
holding billing back. It uses the same batch loop (``sinks/batchloop.py``): each poll is inserted
with the offsets past it in ONE transaction (``billing.ledger_offsets``, consumer
``dead-letters``), so every dead letter lands exactly once; a replayed record is a no-op (its
source offsets are the key).

Each row keeps the reason and message, the dead letter's source offsets, the original event's id,
customer, meter and time when they can be read from it, and the original payload truncated to
8 KiB (text Postgres can hold: a NUL becomes U+FFFD). A dead letter that is not even JSON is
kept as reason ``unreadable_dead_letter``: nothing is skipped silently.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from schemas.config import Settings
from sinks.ledger import check_offsets, load_offsets

log = logging.getLogger("meterflow.dead_letters")

DEAD_LETTERS_CONSUMER = "dead-letters"
PAYLOAD_KEEP_CHARS = 8192
ERROR_KEEP_CHARS = 2000


def _text(s: str | None, keep: int) -> str | None:
    return None if s is None else s[:keep].replace("\x00", "\ufffd")


def _instant(v: Any) -> datetime | None:
    from schemas.event import parse_event_time

    try:
        return parse_event_time(v)
    except Exception:  # noqa: BLE001 — a rejected event may carry any event_time
        return None


def _month(t: datetime) -> datetime:
    return datetime(t.year, t.month, 1, tzinfo=UTC)


def dead_letter_row(topic: str, partition: int, offset: int, value: bytes | None,
                    timestamp_ms: int | None) -> tuple[Any, ...]:
    """The ``billing.dead_letters`` row of one DLQ record (jobs/flink/metering.py DLQ_COLUMNS)."""
    raw = value or b""
    rec: Any = None
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    if not isinstance(rec, dict):
        when = (datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC) if timestamp_ms is not None
                else datetime.now(UTC))
        return (topic, partition, offset, "unreadable_dead_letter", "the dead letter is not a JSON object",
                None, None, None, None, when, _month(when),
                _text(raw[:PAYLOAD_KEEP_CHARS].decode("utf-8", "replace"), PAYLOAD_KEEP_CHARS), len(raw))
    payload = rec.get("payload")
    if not isinstance(payload, str) and isinstance(rec.get("payload_b64"), str):
        try:
            payload = base64.b64decode(rec["payload_b64"])[:PAYLOAD_KEEP_CHARS].decode("utf-8", "replace")
        except ValueError:
            payload = None
    original: Any = None
    if isinstance(payload, str):
        try:
            original = json.loads(payload)
        except (ValueError, RecursionError):
            original = None
    original = original if isinstance(original, dict) else {}

    def field(name: str) -> str | None:
        v = original.get(name)
        return _text(v, 128) if isinstance(v, str) else None

    ms = rec.get("ingestion_time_ms")
    rejected = (datetime.fromtimestamp(ms / 1000, tz=UTC) if isinstance(ms, int)
                else datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC) if timestamp_ms is not None
                else datetime.now(UTC))
    event_time = _instant(original.get("event_time"))
    size = rec.get("payload_bytes")
    return (topic, partition, offset, _text(str(rec.get("reason") or "unknown"), 128),
            _text(rec.get("message") if isinstance(rec.get("message"), str) else None, ERROR_KEEP_CHARS),
            field("event_id"), field("customer_id"), field("meter"), event_time, rejected,
            _month(event_time or rejected), _text(payload if isinstance(payload, str) else None, PAYLOAD_KEEP_CHARS),
            size if isinstance(size, int) and size >= 0 else len(raw))


def apply_dead_letters(conn: psycopg.Connection, rows: Sequence[tuple[Any, ...]], *, consumer: str,
                       start_offsets: dict[tuple[str, int], int],
                       next_offsets: dict[tuple[str, int], int]) -> int:
    """Insert ``rows`` and store the offsets past them, in one transaction; returns rows inserted."""
    with conn.transaction():
        check_offsets(conn, consumer, start_offsets)  # refuses a batch applied already
        n = 0
        if rows:
            with conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO billing.dead_letters (kafka_topic, kafka_partition, kafka_offset,
                              reason, error, event_id, customer_id, meter, event_time, rejected_at,
                              period_start, payload, payload_bytes)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT DO NOTHING""", rows)
                n = len(rows)
        items = sorted(next_offsets.items())
        conn.execute(
            """INSERT INTO billing.ledger_offsets (consumer, topic, partition, next_offset)
               SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o)
               ON CONFLICT (consumer, topic, partition)
               DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()""",
            (consumer, [k[0] for k, _ in items], [k[1] for k, _ in items], [v for _, v in items]))
    return n


def run_dead_letters(settings: Settings, *, bounded: bool, consumer: str = DEAD_LETTERS_CONSUMER,
                     stop: Callable[[], bool] | None = None, max_batch: int = 5_000) -> int:
    """Copy the DLQ topic into ``billing.dead_letters`` (every partition); ``bounded``: stop at
    the end offsets present at start. Returns the dead letters written by this run."""
    from sinks.batchloop import Loop, Postgres, RetryPolicy, Status
    from sinks.db import connect
    from sinks.ledger import StaleBatchError

    total = 0

    def write(conn: psycopg.Connection, polled: Any) -> int:
        rows = [dead_letter_row(m.topic, m.partition, m.offset, m.value, m.timestamp)
                for m in polled.records]
        return apply_dead_letters(conn, rows, consumer=consumer, start_offsets=polled.start_offsets,
                                  next_offsets=polled.next_offsets)

    def on_write(n: int, polled: Any) -> None:
        nonlocal total
        total += n

    def offsets(c: psycopg.Connection, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        with c.transaction():
            stored = load_offsets(c, consumer)
        return {k: stored[k] for k in keys if k in stored}

    status = Status(None, consumer=consumer, group_id=None)
    pg = Postgres(lambda: connect(settings, application_name="meterflow-dead-letters", jit=False),
                  RetryPolicy(), status, stop=stop)
    loop = Loop(bootstrap_servers=settings.kafka.bootstrap_servers, topics=[settings.topics.dlq],
                consumer=consumer, write=write, load_offsets=offsets, postgres=pg,
                stale_errors=(StaleBatchError,), max_batch=max_batch)
    try:
        loop.run(bounded=bounded, stop=stop, on_write=on_write)
    finally:
        pg.close()
    return total
