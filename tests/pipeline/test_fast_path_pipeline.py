"""Differential test of the metering job's validation stage (jobs.flink.metering.validated) on Flink:
the JVM fast path (Flink SQL: the pattern, the field cuts, the event-time arithmetic, the future
rule) and the Python validator must give every payload exactly the row the contract gives it
(operators.validate.validate_row), and the fast path must claim exactly what the pattern claims
in Python."""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobs.flink.env import table_environment
from jobs.flink.metering import validated
from operators.validate import VALIDATED_FIELDS, validate_row
from schemas.config import load_settings
from schemas.event import jvm_fast_event_pattern
from tests.fast_path_corpus import CASES, METERS, base, compact, random_payloads
from tests.pipeline.harness import create_file_source

# the compared fields (message and ingestion time differ by nature), and their index in
# validate_row's row
COMPARED = ["ok", "reason", "event_id", "customer_id", "meter", "event_time_ms", "quantity", "properties",
            "payload_b64", "payload_text"]
ROW_INDEX = [[n for n, _ in VALIDATED_FIELDS].index(c) for c in COMPARED]

FUTURE = [
    compact(**base(event_id="future-fast", event_time="2999-01-01T00:00:00Z")),  # fast shape, far future
    json.dumps(base(event_id="future-slow", event_time="2999-01-01T00:00:00Z")).encode(),  # validator's
]


def normalized(key: tuple) -> tuple:
    """A rejected row's contract is its reason and its payload (the dead-letter fields): the event
    fields a rejection may carry are not read downstream, so they are left out of the comparison."""
    payload, ok, reason, *fields, b64, text = key
    return (payload, ok, reason, *(fields if ok else [None] * len(fields)), b64, text)


def corpus() -> list[bytes]:
    # one payload per line of the source file: line breaks cannot be expressed here (the unit test
    # covers them)
    lines = [p for p, _ in CASES] + random_payloads(600, seed=11) + FUTURE
    return [p for p in lines if b"\n" not in p and b"\r" not in p]


@pytest.fixture(scope="module", params=[1, 2], ids=["parallelism-1", "parallelism-2"])
def run(request, tmp_path_factory) -> tuple[list[dict], int, int]:
    p = request.param
    work: Path = tmp_path_factory.mktemp(f"fast{p}")
    (work / "in").mkdir()
    (work / "in" / "events.txt").write_bytes(b"".join(line + b"\n" for line in corpus()))
    settings = load_settings(None, meters=[{"name": m} for m in METERS])
    t_env = table_environment(settings, job_name="fast-path-test", parallelism=p, checkpointing=False)
    t_env.create_temporary_view("v", validated(t_env, create_file_source(t_env, settings, work / "in"), settings))
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE out_rows (
  `value` BYTES, ok BOOLEAN, reason STRING, event_id STRING, customer_id STRING, meter STRING,
  event_time_ms BIGINT, quantity STRING, properties STRING, payload_b64 STRING, payload_text STRING,
  ingestion_time_ms BIGINT, validated_by STRING
) WITH ('connector' = 'filesystem', 'path' = '{work / "out"}', 'format' = 'json')""")
    started = int(time.time() * 1000)
    t_env.execute_sql("""
INSERT INTO out_rows SELECT `value`, ok, reason, event_id, customer_id, meter, event_time_ms, quantity,
  properties, payload_b64, payload_text, ingestion_time_ms, validated_by FROM v""").wait()
    ended = int(time.time() * 1000)
    rows = []
    for f in sorted((work / "out").rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows, started, ended


def test_every_payload_gets_the_contracts_row_whichever_path_validated_it(run) -> None:
    rows, _, _ = run
    settings = load_settings(None)
    now = datetime.now(UTC)
    expected = Counter()
    for p in corpus():
        r = validate_row(p, now, settings.time.max_future_skew, frozenset(METERS))
        expected[normalized((p, *(r[i] for i in ROW_INDEX)))] += 1
    got = Counter()
    for r in rows:
        got[normalized((base64.b64decode(r["value"]), *(r[c] for c in COMPARED)))] += 1
    assert got == expected


def test_the_jvm_claims_exactly_what_the_pattern_claims_in_python(run) -> None:
    rows, _, _ = run
    pattern = re.compile(jvm_fast_event_pattern(METERS))
    by_payload = {base64.b64decode(r["value"]): r["validated_by"] for r in rows}
    for p in corpus():
        text = p.decode("utf-8", errors="replace")
        assert by_payload[p] == ("jvm" if pattern.search(text) else "python"), p
    # both paths carried real traffic
    assert Counter(by_payload.values())["jvm"] > 50 and Counter(by_payload.values())["python"] > 50


def test_the_fast_path_rejects_a_future_event_with_the_validators_reason_and_stamps_ingestion_time(run) -> None:
    rows, started, ended = run
    future = {r["event_id"] or json.loads(base64.b64decode(r["value"]))["event_id"]: r for r in rows
              if r["reason"] == "future_event_time"}
    assert future["future-fast"]["validated_by"] == "jvm"
    assert future["future-slow"]["validated_by"] == "python"
    # the JVM's processing-time arithmetic (ms since the epoch) agrees with the wall clock
    for r in rows:
        assert started - 1000 <= r["ingestion_time_ms"] <= ended + 1000, r
