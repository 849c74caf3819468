"""An idle partition must not stall windows: a streaming (unbounded) metering job reads a topic with
two partitions, every event goes to partition 0, and windows still fire once the idleness timeout
marks partition 1 idle. Without the timeout the watermark would wait for partition 1 forever."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.e2e.test_metering_restart import committed_records, streaming_job
from tests.integration.metering_util import private_metering_settings, read_topic

pytestmark = pytest.mark.integration


def test_an_idle_partition_does_not_stall_windows(tmp_path: Path) -> None:
    with private_metering_settings(partitions=2, window_size="1h", allowed_lateness="1h",
                                   max_out_of_orderness="1s", idleness_timeout="3s") as s:
        producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers)
        for i in range(180):  # 3 hours of events, one a minute, all on partition 0
            doc = {"event_id": f"idle-{i}", "event_time": f"2026-11-05T{i // 60:02d}:{i % 60:02d}:00Z",
                   "customer_id": "cust-00000", "meter": "api_calls", "quantity": 1}
            producer.send(s.topics.events, value=json.dumps(doc).encode(), key=b"cust-00000", partition=0)
        producer.flush()
        producer.close()

        windows: list[dict] = []
        with streaming_job(s, tmp_path) as job:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and job.poll() is None:
                if committed_records(s, s.topics.ledger):
                    windows = [r for r in read_topic(s, s.topics.ledger) if r["kind"] == "window"]
                    if len(windows) >= 2:
                        break
                time.sleep(1)
        # hours 00:00 and 01:00 closed (the watermark reached 02:59): partition 1 did not hold them
        assert {w["window_start_ms"] for w in windows} >= {1793836800000, 1793840400000}
        assert all(w["qcount"] == 60 for w in windows)
