"""The validation operator: a stateless Python process function, thin by design — it unpacks the
raw Kafka value, calls :func:`schemas.event.validate_event` (the contract), and packs the result
into a row the SQL pipeline routes on.

It sees only the payloads the JVM fast path of jobs/flink/metering.py does not claim (any layout but
the common compact one, and every invalid payload). It is a DataStream ``ProcessFunction``
between ``to_data_stream`` and ``from_data_stream``: the record timestamp (rowtime) and the
watermarks flow through it unchanged. The metrics are counted downstream, on the JVM's final
verdict (operators/metrics.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pyflink.common import Row, Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream.functions import ProcessFunction

from schemas.event import (
    DLQ_MESSAGE_MAX_CHARS,
    AcceptedEvent,
    dead_letter_payload,
    properties_json,
    validate_event,
)

# The row the process function emits: what it passes on from the source, then the validation
# result. Types are factories: every use gets fresh TypeInformation objects.
PASSED_FIELDS = [
    ("value", lambda: Types.PRIMITIVE_ARRAY(Types.BYTE())),
    ("src_topic", Types.STRING),
    ("src_partition", Types.INT),
    ("src_offset", Types.LONG),
]
VALIDATED_FIELDS = [
    ("ok", Types.BOOLEAN),
    ("reason", Types.STRING),
    ("message", Types.STRING),
    ("event_id", Types.STRING),
    ("customer_id", Types.STRING),
    ("meter", Types.STRING),
    ("event_time_ms", Types.LONG),
    ("quantity", Types.STRING),  # the exact decimal, as text
    ("properties", Types.STRING),  # JSON text or NULL
    # a rejected event's payload, bounded (schemas.event.dead_letter_payload): its text, or else
    # its bytes in base64 (the first DLQ_PAYLOAD_KEEP_BYTES)
    ("payload_b64", Types.STRING),
    ("payload_text", Types.STRING),
    ("ingestion_time_ms", Types.LONG),  # when meterflow validated it (processing time)
    ("payload_sha256", Types.STRING),  # hex SHA-256 of the original bytes, only for rejected
    ("payload_bytes", Types.INT),  # the size of the original payload (every row)
]


def validated_stream_type() -> TypeInformation:  # a fresh TypeInformation each call
    """The row type the process function emits: PASSED_FIELDS, then VALIDATED_FIELDS."""
    fields = PASSED_FIELDS + VALIDATED_FIELDS
    return Types.ROW_NAMED([n for n, _ in fields], [make() for _, make in fields])


def validate_row(
    value: bytes | None, now: datetime, skew: timedelta, meters: frozenset[str]
) -> Row:
    """Pure: raw bytes -> the row of VALIDATED_FIELDS."""
    raw = value if value is not None else b""
    result = validate_event(raw, now=now, max_future_skew=skew, meters=meters)
    ingested = int(now.timestamp() * 1000)
    if isinstance(result, AcceptedEvent):
        return Row(True, None, None, result.event_id, result.customer_id, result.meter,
                   result.event_time_ms, str(result.quantity), properties_json(result.properties),
                   None, None, ingested, None, len(raw))
    b64, text = dead_letter_payload(raw)
    return Row(False, result.reason.value, result.message[:DLQ_MESSAGE_MAX_CHARS], None, None, None, None,
               None, None, b64, text, ingested, hashlib.sha256(raw).hexdigest(), len(raw))


class ValidateProcess(ProcessFunction):
    """Source row (value, src_topic, src_partition, src_offset, rowtime) -> the source fields
    plus VALIDATED_FIELDS. Stateless."""

    def __init__(self, meters: list[str], max_future_skew_ms: int,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.meters = frozenset(meters)
        self.skew = timedelta(milliseconds=max_future_skew_ms)
        self.clock = clock

    def process_element(self, value: Row, ctx: ProcessFunction.Context):
        now = self.clock() if self.clock else datetime.now(UTC)
        row = validate_row(value[0], now, self.skew, self.meters)
        yield Row(value[0], value[1], value[2], value[3], *row)
