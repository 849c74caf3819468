"""The validation operator: a stateless Python scalar function, thin by design — it unpacks the
raw Kafka value, calls :func:`schemas.event.validate_event` (the contract), and packs the result
into a row the SQL pipeline routes on. It also counts accepted/rejected events (by reason) as
Flink metrics.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pyflink.common import Row
from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from schemas.event import AcceptedEvent, Reason, validate_event

VALIDATED_FIELDS = [
    ("ok", DataTypes.BOOLEAN()),
    ("reason", DataTypes.STRING()),
    ("message", DataTypes.STRING()),
    ("event_id", DataTypes.STRING()),
    ("customer_id", DataTypes.STRING()),
    ("meter", DataTypes.STRING()),
    ("event_time_ms", DataTypes.BIGINT()),
    ("quantity", DataTypes.STRING()),  # the exact decimal, as text
    ("properties", DataTypes.STRING()),  # JSON text or NULL
    ("payload_b64", DataTypes.STRING()),  # the original bytes, only for rejected events
    ("payload_text", DataTypes.STRING()),  # the original text when it is UTF-8, only for rejected
    ("ingestion_time_ms", DataTypes.BIGINT()),  # when meterflow validated it (processing time)
]


def validated_type() -> DataTypes:
    return DataTypes.ROW([DataTypes.FIELD(n, t) for n, t in VALIDATED_FIELDS])


def validate_row(
    value: bytes | None, now: datetime, skew: timedelta, meters: frozenset[str]
) -> Row:
    """Pure: raw bytes -> the row of VALIDATED_FIELDS."""
    raw = value if value is not None else b""
    result = validate_event(raw, now=now, max_future_skew=skew, meters=meters)
    ingested = int(now.timestamp() * 1000)
    if isinstance(result, AcceptedEvent):
        props = (
            json.dumps(result.properties, separators=(",", ":"), ensure_ascii=False, default=str)
            if result.properties is not None
            else None
        )
        return Row(True, None, None, result.event_id, result.customer_id, result.meter,
                   result.event_time_ms, str(result.quantity), props, None, None, ingested)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return Row(False, result.reason.value, result.message, None, None, None, None, None, None,
               base64.b64encode(raw).decode("ascii"), text, ingested)


class ValidateEvent(ScalarFunction):
    def __init__(self, meters: list[str], max_future_skew_ms: int,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.meters = frozenset(meters)
        self.skew = timedelta(milliseconds=max_future_skew_ms)
        self.clock = clock
        self._accepted = None
        self._rejected: dict[str, object] = {}

    def open(self, function_context: FunctionContext) -> None:
        group = function_context.get_metric_group().add_group("meterflow")
        self._accepted = group.counter("events_valid")
        self._rejected = {r.value: group.add_group("reason", r.value).counter("events_rejected") for r in Reason}
        self._lag_ms = 0
        group.gauge("watermark_lag_ms", lambda: self._lag_ms)

    def eval(self, value: bytes | None, watermark: datetime | None = None) -> Row:
        now = self.clock() if self.clock else datetime.now(UTC)
        row = validate_row(value, now, self.skew, self.meters)
        if self._accepted is not None:
            if row[0]:
                self._accepted.inc()
            else:
                self._rejected[row[1]].inc()
            if watermark is not None:
                wm = watermark if watermark.tzinfo else watermark.replace(tzinfo=UTC)
                self._lag_ms = int((now - wm).total_seconds() * 1000)
        return row


def make_validate_udf(meters: list[str], max_future_skew: timedelta,
                      clock: Callable[[], datetime] | None = None):  # noqa: ANN201
    return udf(
        ValidateEvent(meters, int(max_future_skew.total_seconds() * 1000), clock),
        input_types=[DataTypes.BYTES(), DataTypes.TIMESTAMP_LTZ(3)],
        result_type=validated_type(),
    )
