"""One typed definition per Kafka record meterflow writes or reads, with its encode/parse beside it.

- ledger (``metering-ledger``), written by the metering job (``LEDGER_COLUMNS``): an accepted
  event (``kind = event``, kept as JSON text: :class:`EventJson`) or a window firing
  (:class:`WindowChange`); read with :func:`parse_ledger`.
- duplicates (``metering-duplicates``), written by the metering job (upsert-kafka):
  :class:`DuplicateCount`; read with :func:`parse_duplicate_count`.
- ``usage-events-late``, written by the metering job (``LATE_COLUMNS``): a late event ->
  :class:`LedgerEvent` (source late); read with :func:`parse_late`.
- ``usage-events-dlq``, written by the metering job (``DLQ_COLUMNS``) and re-rating: a dead
  letter; :func:`dead_letter_record`, :func:`dead_letter_original`.

Decimals travel as JSON strings and instants as integer milliseconds since the epoch (UTC). Kinds,
sources and lateness are enums (``StrEnum``: they compare equal to the strings on the wire and in
Postgres). This module imports only ``schemas.event``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from schemas.event import (
    DLQ_PAYLOAD_KEEP_BYTES,
    MAX_ID_LENGTH,
    METER_PATTERN,
    METER_RE,
    Reason,
    RejectError,
    dead_letter_payload,
    parse_quantity,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def from_epoch_ms(ms: int) -> datetime:
    return EPOCH + ms * _MS


def _epoch_ms(t: datetime) -> int:
    return (t - EPOCH) // _MS


class RecordKind(StrEnum):
    """``kind`` of a ledger-topic record."""

    EVENT = "event"  # an accepted event (on time, or late within allowed lateness)
    WINDOW = "window"  # a window firing: Flink's on-time aggregate of the window
    LATE = "late"  # superseded single-event partial of metering jobs before the durable dedup: skipped


class Lateness(StrEnum):
    ON_TIME = "on_time"
    LATE = "late"  # within allowed lateness: the window's next revision


class EventSource(StrEnum):
    """``usage_events.source``: who accepted the event."""

    STREAM = "stream"  # the metering job
    LATE = "late"  # the re-rating job (beyond allowed lateness)


class WindowSource(StrEnum):
    """``aggregated_usage.source`` of a window change (a revision's origin)."""

    WINDOW = "window"  # the metering job fired the window
    LATE = "late"  # the re-rating job folded late events in
    RERATE = "rerate"  # `meterflow rerate` recomputed it


class DuplicateSource(StrEnum):
    """``duplicate_counts.source``: who saw the duplicate copy."""

    STREAM = "stream"  # the metering job's keep-first dedup
    LEDGER = "ledger"  # the ledger writer: the id was already in usage_events
    LATE = "late"  # the re-rating job: a late copy of an accepted id


# Column layouts of the metering job's Kafka outputs (its JSON sinks are declared from these).
LEDGER_COLUMNS = [
    ("kind", "STRING"),  # RecordKind: event | window
    ("customer_id", "STRING"),
    ("meter", "STRING"),
    ("window_start_ms", "BIGINT"),
    ("window_end_ms", "BIGINT"),
    ("qsum", "STRING"),
    ("qcount", "BIGINT"),
    ("qmax", "STRING"),
    ("event_id", "STRING"),
    ("event_time_ms", "BIGINT"),
    ("quantity", "STRING"),
    ("properties", "STRING"),
    ("ingestion_time_ms", "BIGINT"),
    ("src_topic", "STRING"),
    ("src_partition", "INT"),
    ("src_offset", "BIGINT"),
    ("lateness", "STRING"),  # Lateness, of events
]
LATE_COLUMNS = [
    ("event_id", "STRING"),
    ("customer_id", "STRING"),
    ("meter", "STRING"),
    ("event_time_ms", "BIGINT"),
    ("quantity", "STRING"),
    ("properties", "STRING"),
    ("window_start_ms", "BIGINT"),
    ("window_end_ms", "BIGINT"),
    ("watermark", "STRING"),  # the classifier's watermark when the event was routed, UTC
    ("payload", "STRING"),  # the original payload text (bounded by the contract: EVENT_TOO_LARGE)
    ("ingestion_time_ms", "BIGINT"),
    ("src_topic", "STRING"),
    ("src_partition", "INT"),
    ("src_offset", "BIGINT"),
]
DLQ_COLUMNS = [
    ("reason", "STRING"),
    ("message", "STRING"),
    ("payload_b64", "STRING"),  # NULL, or the original bytes in base64 when `payload` is NULL (truncated: see below)
    ("payload", "STRING"),  # the original text, when it is UTF-8 and fits the record JSON-escaped
    ("payload_truncated", "BOOLEAN"),  # payload_b64 holds only the first DLQ_PAYLOAD_KEEP_BYTES
    ("payload_bytes", "INT"),  # the original payload's size
    ("payload_sha256", "STRING"),  # hex SHA-256 of the original bytes
    ("src_topic", "STRING"),
    ("src_partition", "INT"),
    ("src_offset", "BIGINT"),
    ("ingestion_time_ms", "BIGINT"),
]


# --- the ledger and duplicates topics ---------------------------------------------------------


def _json_decimal(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def _dec(v: Any) -> Decimal:
    if v is None:
        return Decimal(0)
    if isinstance(v, float):
        raise TypeError("a binary float reached the ledger; decimals travel as strings")
    return Decimal(v) if not isinstance(v, Decimal) else v


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """An accepted event as the ledger stores it (``usage_events``): the contract's fields, its
    window and where it came from. Not :class:`schemas.event.AcceptedEvent`, the validator's output."""

    event_id: str
    customer_id: str
    meter: str
    event_time: datetime
    quantity: Decimal
    properties: str | None  # JSON text
    window_start: datetime
    ingestion_time: datetime
    source: EventSource  # stream | late
    kafka_topic: str | None
    kafka_partition: int | None
    kafka_offset: int | None
    lateness: Lateness = Lateness.ON_TIME  # late: within allowed lateness (a window revision)
    window_end: datetime | None = None

    def to_json(self) -> bytes:
        """This event as the metering job's ledger message (the layout Postgres reads)."""
        ms = _epoch_ms
        return orjson.dumps({
            "kind": RecordKind.EVENT, "customer_id": self.customer_id, "meter": self.meter,
            "window_start_ms": ms(self.window_start),
            "window_end_ms": ms(self.window_end) if self.window_end else None, "event_id": self.event_id,
            "event_time_ms": ms(self.event_time), "quantity": str(self.quantity),
            "properties": self.properties, "ingestion_time_ms": ms(self.ingestion_time),
            "src_topic": self.kafka_topic, "src_partition": self.kafka_partition,
            "src_offset": self.kafka_offset, "lateness": self.lateness, "source": self.source,
        })


@dataclass(frozen=True, slots=True)
class WindowChange:
    """A window message. ``source = 'window'``: the metering job fired the window (its on-time
    aggregate; the writer uses ``qcount`` to know when it has read every event the firing counted,
    and aggregates the quantities from ``usage_events``). ``source = 'late'``: the re-rating job's
    partial of newly accepted late events, folded into the window as a delta."""

    sign: int
    customer_id: str
    meter: str
    window_start: datetime
    window_end: datetime
    qsum: Decimal
    qcount: int
    qmax: Decimal
    source: WindowSource = WindowSource.WINDOW  # the metering job; LATE: the re-rating job
    caused_by: str | None = None


@dataclass(frozen=True, slots=True)
class DuplicateCount:
    """The number of duplicates of one event id seen so far (an absolute count)."""

    event_id: str
    duplicates: int
    source: DuplicateSource = DuplicateSource.STREAM
    epoch_ms: int = 0  # the counting epoch: the first accepted copy's ingestion time (ms)


def parse_ledger_event(value: bytes) -> LedgerEvent:
    return _accepted_from(_loads(value))


def _loads(value: bytes) -> dict[str, Any]:
    """One ledger message. Decimals travel as JSON strings and instants as integer milliseconds,
    so orjson (which reads JSON numbers with a fraction as binary floats) is safe here: a float
    reaching a money or quantity field raises (``_dec``)."""
    d: dict[str, Any] = orjson.loads(value)
    return d


def _accepted_from(d: dict[str, Any]) -> LedgerEvent:
    return LedgerEvent(
        event_id=d["event_id"],
        customer_id=d["customer_id"],
        meter=d["meter"],
        event_time=from_epoch_ms(int(d["event_time_ms"])),
        quantity=_dec(d["quantity"]),
        properties=d.get("properties"),
        window_start=from_epoch_ms(int(d["window_start_ms"])),
        ingestion_time=from_epoch_ms(int(d["ingestion_time_ms"])),
        source=EventSource(d.get("source") or EventSource.STREAM),
        kafka_topic=d.get("src_topic"),
        kafka_partition=d.get("src_partition"),
        kafka_offset=d.get("src_offset"),
    )


@dataclass(frozen=True, slots=True)
class EventJson:
    """An accepted event as the ledger message the metering job wrote (``kind = event``), kept as
    its JSON text: Postgres reads the fields (:func:`sinks.ledger._ingest_events`), so the writer's work per
    event is a prefix test instead of a parse, a row object and a COPY row."""

    value: bytes


# Flink's JSON format writes the columns in LEDGER_COLUMNS order, compactly: `kind` comes first
EVENT_JSON_PREFIX = b'{"kind":"event",'


def parse_ledger(value: bytes) -> WindowChange | EventJson | None:
    """One message of the metering job's ledger topic (see jobs/flink/metering.py LEDGER_COLUMNS): an
    accepted event (kept as its JSON text, which Postgres reads) or a window firing. A ``late``
    message (a single-event partial, written by metering jobs before the durable dedup) is
    superseded by its event message, which carries ``lateness``: it is skipped."""
    if value.startswith(EVENT_JSON_PREFIX):
        return EventJson(value)
    d = _loads(value)
    kind = d["kind"]
    if kind == RecordKind.EVENT:
        return EventJson(value)
    if kind == RecordKind.WINDOW:
        return WindowChange(
            sign=1,
            customer_id=d["customer_id"],
            meter=d["meter"],
            window_start=from_epoch_ms(int(d["window_start_ms"])),
            window_end=from_epoch_ms(int(d["window_end_ms"])),
            qsum=_dec(d["qsum"]),
            qcount=int(d["qcount"]),
            qmax=_dec(d["qmax"]),
            source=WindowSource.WINDOW,
        )
    if kind == RecordKind.LATE:
        return None
    raise ValueError(f"unknown ledger message kind {kind!r}")


def parse_duplicate_count(key: bytes | None, value: bytes | None) -> DuplicateCount | None:
    """upsert-kafka message {event_id, duplicates}; a tombstone (state expired) changes nothing."""
    if value is None:
        return None
    d = _json_decimal(value)
    return DuplicateCount(event_id=d["event_id"], duplicates=int(d["duplicates"]),
                          epoch_ms=int(d.get("epoch_ms") or 0))


# --- the late topic ---------------------------------------------------------------------------

INVALID_LATE_RECORD = "invalid_late_record"  # DLQ reason: a late-topic record that is not one
INVALID_WINDOW = "invalid_window"  # DLQ reason: its window does not match its event time / size


# --- parsing the late topic ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvalidLate:
    reason: str
    message: str
    raw: bytes
    topic: str
    partition: int
    offset: int


class _LateRecordError(Exception):
    """Why a late-topic record is not an event: a reason of the event contract (:class:`Reason`) or
    one only the late topic has (``INVALID_WINDOW``)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message


def _bad(reason: str, message: str) -> _LateRecordError:
    return _LateRecordError(reason, message)


def parse_late(
    raw: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    meters: frozenset[str] | set[str],
    window_ms: int,
    now: datetime | None = None,
) -> LedgerEvent | InvalidLate:
    """One record of ``usage-events-late`` (jobs/flink/metering.py LATE_COLUMNS) -> an accepted event
    with source ``late``, or the reason it is not one. ``now``: the ingestion time of a record
    that carries none (default: the clock)."""
    data = raw if raw is not None else b""
    try:
        try:
            d = json.loads(data, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(Reason.INVALID_JSON, f"not JSON: {e}"[:200]) from None
        if not isinstance(d, dict):
            raise _bad(Reason.NOT_AN_OBJECT, f"a late record is a JSON object, got {type(d).__name__}")
        for f in ("event_id", "customer_id", "meter", "event_time_ms", "window_start_ms", "window_end_ms"):
            if d.get(f) is None:
                raise _bad(Reason.MISSING_FIELD, f"{f} is missing")
        for f, reason in (("event_id", Reason.INVALID_EVENT_ID), ("customer_id", Reason.INVALID_CUSTOMER_ID)):
            v = d[f]
            if not isinstance(v, str) or not (1 <= len(v) <= MAX_ID_LENGTH):
                raise _bad(reason, f"{f} must be a string of 1-{MAX_ID_LENGTH} characters")
        meter = d["meter"]
        if not isinstance(meter, str) or not METER_RE.fullmatch(meter):
            raise _bad(Reason.INVALID_METER, f"meter {str(meter)[:70]!r} is not {METER_PATTERN}")
        if meter not in meters:
            raise _bad(Reason.UNKNOWN_METER, f"meter {meter!r} is not declared in the configuration")
        ints = {}
        for f in ("event_time_ms", "window_start_ms", "window_end_ms"):
            v = d[f]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _bad(Reason.INVALID_EVENT_TIME if f == "event_time_ms" else INVALID_WINDOW,
                           f"{f} must be a non-negative integer (epoch ms), got {str(v)[:40]!r}")
            ints[f] = v
        et, ws, we = ints["event_time_ms"], ints["window_start_ms"], ints["window_end_ms"]
        if ws % window_ms or we - ws != window_ms or not (ws <= et < we):
            raise _bad(INVALID_WINDOW, f"window [{ws}, {we}) is not the {window_ms} ms window of "
                       f"event_time_ms {et} (was the window size changed?)")
        q = parse_quantity(d.get("quantity", 1) if d.get("quantity") is not None else 1)
        props = d.get("properties")
        if props is not None:
            if isinstance(props, str):
                try:
                    pd = json.loads(props)
                except ValueError:
                    raise _bad(Reason.INVALID_PROPERTIES, "properties is not JSON text") from None
            else:
                pd = props
            if not isinstance(pd, dict):
                raise _bad(Reason.INVALID_PROPERTIES, "properties must be an object")
            props = json.dumps(pd, separators=(",", ":"), ensure_ascii=False, default=str)
        ing = d.get("ingestion_time_ms")
        ingestion = from_epoch_ms(int(ing)) if isinstance(ing, int) and not isinstance(ing, bool) \
            else (now or datetime.now(UTC))
        sp, so = d.get("src_partition"), d.get("src_offset")
        return LedgerEvent(
            event_id=d["event_id"], customer_id=d["customer_id"], meter=meter,
            event_time=from_epoch_ms(et), quantity=q, properties=props,
            window_start=from_epoch_ms(ws), ingestion_time=ingestion, source=EventSource.LATE,
            kafka_topic=d.get("src_topic") if isinstance(d.get("src_topic"), str) else None,
            kafka_partition=sp if isinstance(sp, int) else None,
            kafka_offset=so if isinstance(so, int) else None,
        )
    except (RejectError, _LateRecordError) as r:  # RejectError: parse_quantity's
        return InvalidLate(str(r.reason), r.message, data, topic, partition, offset)


def dead_letter_record(inv: InvalidLate, now_ms: int | None = None) -> bytes:
    """The DLQ JSON of the metering job (jobs/flink/metering.py DLQ_COLUMNS) for an invalid late record."""
    b64, text = dead_letter_payload(inv.raw)  # bounded, like the metering job's dead letters
    return json.dumps({
        "reason": inv.reason,
        "message": inv.message[:500],
        "payload_b64": b64,
        "payload": text,
        "payload_truncated": b64 is not None and len(inv.raw) > DLQ_PAYLOAD_KEEP_BYTES,
        "payload_bytes": len(inv.raw),
        "payload_sha256": hashlib.sha256(inv.raw).hexdigest(),
        "src_topic": inv.topic,
        "src_partition": inv.partition,
        "src_offset": inv.offset,
        "ingestion_time_ms": now_ms if now_ms is not None else int(time.time() * 1000),
    }, separators=(",", ":"), ensure_ascii=False).encode()


def late_record_attribution(value: bytes | None) -> tuple[datetime | None, str, str]:
    """(event time, customer, meter) of a late-topic record, for counting it in a period ('?'
    where unreadable): its ``event_time_ms``, not the ``payload`` it carries."""
    try:
        d = json.loads(value or b"")
        when = from_epoch_ms(int(d["event_time_ms"])) if isinstance(d, dict) else None
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
        return None, "?", "?"
    c, m = d.get("customer_id"), d.get("meter")
    return when, (c if isinstance(c, str) else "?"), (m if isinstance(m, str) else "?")


def dead_letter_original(value: bytes | None) -> Any:
    """The original payload text inside a dead letter (None when it keeps only bytes, base64)."""
    try:
        rec = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return rec.get("payload") if isinstance(rec, dict) else None
