"""Re-rating job, pure parts: late-topic records are parsed or dead-lettered with a reason, and a
batch of late events becomes one partial per window."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from jobs.consumers.rerating import window_partials
from schemas.records import InvalidLate, LedgerEvent, dead_letter_record, parse_late

H_MS = 3_600_000
METERS = frozenset({"api_calls", "seats"})


def rec(**over) -> bytes:
    d = {"event_id": "e1", "customer_id": "c1", "meter": "api_calls", "event_time_ms": H_MS * 10 + 5,
         "quantity": "2.5", "properties": '{"region":"eu"}', "window_start_ms": H_MS * 10,
         "window_end_ms": H_MS * 11, "watermark": "x", "payload": "{}", "ingestion_time_ms": 7,
         "src_topic": "usage-events", "src_partition": 1, "src_offset": 42}
    d.update(over)
    return json.dumps(d).encode()


def parse(raw: bytes):
    return parse_late(raw, topic="late", partition=0, offset=9, meters=METERS, window_ms=H_MS)


def test_a_valid_late_record_becomes_an_accepted_event_with_source_late_and_exact_quantity() -> None:
    e = parse(rec())
    assert isinstance(e, LedgerEvent)
    assert (e.event_id, e.source, e.quantity, e.kafka_topic, e.kafka_offset) == ("e1", "late", Decimal("2.5"),
                                                                                "usage-events", 42)
    assert e.window_start == datetime(1970, 1, 1, 10, tzinfo=UTC)
    assert json.loads(e.properties) == {"region": "eu"}


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe", "invalid_json"),
    (b"[1]", "not_an_object"),
    (rec(event_id=None), "missing_field"),
    (rec(event_id=""), "invalid_event_id"),
    (rec(meter="Bad Meter"), "invalid_meter"),
    (rec(meter="sms"), "unknown_meter"),
    (rec(quantity="-1"), "negative_quantity"),
    (rec(quantity="abc"), "invalid_quantity"),
    (rec(event_time_ms="soon"), "invalid_event_time"),
    (rec(window_start_ms=H_MS * 9, window_end_ms=H_MS * 10), "invalid_window"),
    (rec(window_end_ms=H_MS * 12), "invalid_window"),
    (rec(properties="[1]"), "invalid_properties"),
])
def test_an_invalid_late_record_is_dead_lettered_with_its_reason(raw: bytes, reason: str) -> None:
    r = parse(raw)
    assert isinstance(r, InvalidLate) and r.reason == reason, r
    d = json.loads(dead_letter_record(r, now_ms=1))
    kept = d["payload"].encode() if d["payload"] is not None else base64.b64decode(d["payload_b64"])
    assert d["reason"] == reason and kept == raw  # the text, or the bytes when not UTF-8
    assert d["payload_bytes"] == len(raw) and not d["payload_truncated"]
    assert (d["src_topic"], d["src_partition"], d["src_offset"]) == ("late", 0, 9)


def test_a_late_record_too_large_for_the_dlq_keeps_a_bounded_prefix_with_size_and_hash() -> None:
    """The re-rating job's dead letters obey the same size cap as the metering job's."""
    import hashlib

    from schemas.event import DLQ_PAYLOAD_KEEP_BYTES, MAX_OUTPUT_RECORD_BYTES

    raw = b"\xff" + b"x" * 1_200_000  # not UTF-8, larger than any record may be
    d = dead_letter_record(InvalidLate("invalid_json", "m" * 5000, raw, "late", 0, 9), now_ms=1)
    assert len(d) <= MAX_OUTPUT_RECORD_BYTES
    j = json.loads(d)
    assert base64.b64decode(j["payload_b64"]) == raw[:DLQ_PAYLOAD_KEEP_BYTES] and j["payload"] is None
    assert j["payload_truncated"] and j["payload_bytes"] == len(raw)
    assert j["payload_sha256"] == hashlib.sha256(raw).hexdigest()


def _ev(i: int, ws_h: int, q: str, meter: str = "api_calls") -> LedgerEvent:
    ws = datetime(2026, 11, 1, ws_h, tzinfo=UTC)
    return LedgerEvent(f"e{i}", "c1", meter, ws, Decimal(q), None, ws, ws, "late", None, None, None)


def test_a_burst_for_one_window_becomes_one_partial_with_sum_count_and_max() -> None:
    evs = [_ev(i, 3, str(i)) for i in range(1, 101)] + [_ev(500, 4, "7")]
    parts = window_partials(evs, timedelta(hours=1), "late-batch x")
    assert len(parts) == 2
    p3, p4 = parts
    assert (p3.qsum, p3.qcount, p3.qmax, p3.source) == (Decimal(5050), 100, Decimal(100), "late")
    assert p3.window_end - p3.window_start == timedelta(hours=1)
    assert p3.caused_by.startswith("late-batch x: 100 late events e1..")
    assert p4.caused_by == "e500"  # a single event links to itself
