"""Rejections in Postgres (issue 19): the metering job's dead letters (the DLQ topic) are copied
into billing.dead_letters exactly once, with their source offsets, reason, the original event's
id/customer/meter/time when readable and a truncated payload; analysts count them per period and
reason (billing.v_rejections)."""

from __future__ import annotations

import base64
import json

import pytest

from jobs.consumers.dead_letters import run_dead_letters
from sinks.db import connect
from tests.integration.ledger_input import produce_keyed
from tests.integration.metering_util import private_metering_settings

pytestmark = pytest.mark.integration


def _dlq(reason: str, payload: str | None = None, b64: bytes | None = None, size: int = 0) -> bytes:
    return json.dumps({
        "reason": reason, "message": f"{reason}: rejected", "payload": payload,
        "payload_b64": base64.b64encode(b64).decode() if b64 is not None else None,
        "payload_truncated": False, "payload_bytes": size, "payload_sha256": "0" * 64,
        "src_topic": "usage-events", "src_partition": 0, "src_offset": 7,
        "ingestion_time_ms": 1_770_000_000_000,  # 2026-02-02
    }).encode()


def test_dead_letters_land_in_postgres_once_per_record() -> None:
    event = {"event_id": "e-1", "customer_id": "acme", "meter": "api_calls",
             "event_time": "2026-01-05T10:00:00Z", "quantity": "-3"}
    big = json.dumps({**event, "event_id": "e-big", "properties": {"x": "y" * 20_000}})
    msgs = [
        (None, _dlq("invalid_quantity", json.dumps(event), size=100)),
        (None, _dlq("invalid_quantity", big, size=len(big))),
        (None, _dlq("invalid_json", b64=b"\xff\xfe not utf-8", size=14)),  # bytes only
        (None, b"\x00 not a dead letter at all"),
    ]
    with private_metering_settings(partitions=1) as settings:
        produce_keyed(settings, settings.topics.dlq, msgs)
        assert run_dead_letters(settings, bounded=True) == len(msgs)
        assert run_dead_letters(settings, bounded=True) == 0  # nothing new: nothing twice
        with connect(settings) as conn:
            rows = conn.execute(
                """SELECT kafka_offset, reason, event_id, customer_id, meter,
                          to_char(period_start, 'YYYY-MM'), length(payload), payload_bytes
                     FROM billing.dead_letters ORDER BY kafka_offset""").fetchall()
            assert [r[0] for r in rows] == [0, 1, 2, 3]
            assert rows[0][1:7] == ("invalid_quantity", "e-1", "acme", "api_calls", "2026-01",
                                    len(json.dumps(event)))
            assert rows[1][2] == "e-big" and rows[1][6] == 8192 and rows[1][7] == len(big)  # truncated
            assert rows[2][1:6] == ("invalid_json", None, None, None, "2026-02")  # by rejection time
            assert rows[3][1] == "unreadable_dead_letter"
            per = conn.execute(
                """SELECT to_char(period_start, 'YYYY-MM'), reason, rejected FROM billing.v_rejections
                    WHERE stage = 'metering' ORDER BY 1, 2""").fetchall()
            assert ("2026-01", "invalid_quantity", 2) in per and ("2026-02", "invalid_json", 1) in per
