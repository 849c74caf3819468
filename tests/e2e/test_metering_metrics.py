"""The metering job's Flink metrics (issue 4, item 8), read from the running job's REST API as an
operator would see them: accepted, rejected by reason, duplicates, late within allowed lateness,
late to the side output, and the watermark lag.

A streaming job (one partition, on-event watermarks: deterministic) reads a crafted input; the test
polls the mini-cluster's REST API until the last expected counter moves, then checks every one."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.e2e.test_metering_restart import streaming_job
from tests.integration.metering_util import private_metering_settings

pytestmark = pytest.mark.integration

D = "2026-11-05T"


def ev(event_id: str, when: str, meter: str = "api_calls", *, compact: bool = False) -> bytes:
    """An event; ``compact`` gives the producers' compact layout, which the JVM fast path
    validates (the default, spaced layout goes through the Python validator)."""
    doc = {"event_id": event_id, "event_time": D + when, "customer_id": "cust-00001", "meter": meter,
           "quantity": 2}
    return json.dumps(doc, separators=(",", ":") if compact else None).encode()


INPUT = [
    ev("m-1", "10:01:00Z"),
    ev("m-2", "10:02:00Z"),
    ev("m-2", "10:02:00Z"),  # a duplicate
    ev("f-1", "10:04:00Z", compact=True),  # the fast path
    ev("f-1", "10:04:00Z", compact=True),  # a duplicate on the fast path
    b"not json",  # invalid_json
    ev("m-x", "10:03:00Z", meter="gpu_hours"),  # unknown_meter
    ev("f-x", "10:03:00Z", meter="gpu_hours", compact=True),  # unknown_meter (the validator's)
    json.dumps({"event_id": "f-future", "event_time": "2999-01-01T00:00:00Z", "customer_id": "cust-00001",
                "meter": "api_calls"}, separators=(",", ":")).encode(),  # future, rejected on the fast path
    ev("clock-1", "11:30:00Z"),  # watermark 11:29:59: window 10:00 has fired
    ev("m-3", "10:30:00Z"),  # late within allowed lateness (1 h): a revision
    ev("clock-2", "12:30:00Z"),  # watermark 12:29:59: window 10:00 is past its lateness
    ev("m-4", "10:40:00Z"),  # beyond allowed lateness: the side output
]
VALID = 9  # every event that passed the contract (duplicates included: dedup comes after)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(port: int, path: str) -> Any:  # parsed JSON
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.load(r)


def job_metrics(port: int) -> dict[str, float]:
    """Every operator metric of the running job: '<operator>.<metric>' -> value (summed over
    subtasks)."""
    jobs = [j for j in rest(port, "/jobs")["jobs"] if j["status"] == "RUNNING"]
    if not jobs:
        return {}
    jid = jobs[0]["id"]
    out: dict[str, float] = {}
    for v in rest(port, f"/jobs/{jid}")["vertices"]:
        base = f"/jobs/{jid}/vertices/{v['id']}/metrics"
        ids = [m["id"] for m in rest(port, base)]
        wanted = [i for i in ids if "meterflow" in i or "Deduplicate" in i or "watermarkLag" in i]
        for chunk in (wanted[k:k + 40] for k in range(0, len(wanted), 40)):
            q = urllib.parse.quote(",".join(chunk), safe=",")
            for m in rest(port, f"{base}?get={q}"):
                try:
                    value = float(m["value"])
                except (TypeError, ValueError):
                    continue
                name = m["id"].split(".", 1)[1]  # drop the subtask index
                out[name] = out.get(name, 0.0) + value
    return out


def find(metrics: dict[str, float], suffix: str) -> float:
    hits = [v for k, v in metrics.items() if k.endswith(suffix)]
    assert hits, f"no metric *{suffix} among {sorted(metrics)}"
    return sum(hits)


def test_the_job_reports_accepted_rejected_duplicates_late_and_watermark_lag(tmp_path: Path) -> None:
    with private_metering_settings(partitions=1, window_size="1h", allowed_lateness="1h",
                                   max_out_of_orderness="1s", idleness_timeout="30s") as s:
        producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers)
        for value in INPUT:
            producer.send(s.topics.events, value=value, key=b"cust-00001", partition=0)
        producer.flush()
        producer.close()

        port = free_port()
        metrics: dict[str, float] = {}
        with streaming_job(s, tmp_path, METERFLOW__TIME__WATERMARK_EMIT="on-event",
                           METERFLOW__FLINK__CONFIG=json.dumps({"rest.port": str(port)})) as job:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and job.poll() is None:
                try:
                    metrics = job_metrics(port)
                except OSError:
                    metrics = {}
                if any(k.endswith("meterflow.events_late_beyond") and v >= 1 for k, v in metrics.items()):
                    time.sleep(1)  # the other counters were incremented before this one
                    metrics = job_metrics(port)
                    break
                time.sleep(1)

    assert find(metrics, "meterflow.reason.invalid_json.events_rejected") == 1
    assert find(metrics, "meterflow.reason.unknown_meter.events_rejected") == 2
    assert find(metrics, "meterflow.reason.future_event_time.events_rejected") == 1
    assert find(metrics, "meterflow.reason.missing_field.events_rejected") == 0
    assert find(metrics, "meterflow.events_late_within") == 1
    assert find(metrics, "meterflow.events_late_beyond") == 1
    # accepted: what the Deduplicate operator took in; duplicates: that minus what it let through
    dedup_in = sum(v for k, v in metrics.items() if "Deduplicate" in k and k.endswith(".numRecordsIn"))
    dedup_out = sum(v for k, v in metrics.items() if "Deduplicate" in k and k.endswith(".numRecordsOut"))
    assert dedup_in == VALID and dedup_in - dedup_out == 2, metrics
    # processing time (2026-11-23 or later) minus a watermark of 2026-11-05 12:29:59
    assert find(metrics, "watermarkLag") > 17 * 86_400_000
