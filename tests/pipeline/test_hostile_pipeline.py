"""The hostile corpus (tests/hostile_corpus.py) through the real metering job on Flink's
mini-cluster (issue 14): every record ends in exactly one place — accepted (the ledger), late,
a duplicate, or a dead letter with the contract's reason code — and every record the job writes
fits the broker (schemas.event.MAX_OUTPUT_RECORD_BYTES), dead letters identifying their original
by size and SHA-256 even when truncated."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from operators.validate import validate_row
from schemas.config import load_settings
from schemas.event import DLQ_PAYLOAD_KEEP_BYTES, MAX_OUTPUT_RECORD_BYTES
from tests.hostile_corpus import METERS, hostile_payloads
from tests.pipeline.harness import run_pipeline

# the file source reads one payload per line: payloads with line breaks are left to the unit fuzz
SPECIFIC = [
    b"x" * 1_000_001,  # payload_too_large: its dead letter was 2.3 MB
    json.dumps({"event_id": "big-props", "event_time": "2026-11-23T10:00:00Z", "customer_id": "c",
                "meter": "api_calls", "properties": {f"prop-{i:06d}": "value-" + "x" * 20 for i in range(18_000)}},
               separators=(",", ":")).encode(),  # ~700 KB valid: event_too_large (late record > 1 MB)
    b'{"event_id":"nul\\u0000","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls"}',
    b'{"event_id":"p2-surr\\ud800","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls",'
    b'"quantity":10}',
    b'{"event_id":"p2-surr?","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":40}',
    b'{"event_id":"frac12","event_time":"2026-11-23T10:00:00.123456789012Z","customer_id":"c","meter":"api_calls"}',
    b'{"event_id":"ovf-1","event_time":"2026-11-23T10:00:00Z","customer_id":"ovf","meter":"api_calls","quantity":6e25}',
    b'{"event_id":"ovf-2","event_time":"2026-11-23T10:00:01Z","customer_id":"ovf","meter":"api_calls","quantity":6e25}',
    b'{"event_id":"ovf-3","event_time":"2026-11-23T10:00:02Z","customer_id":"ovf","meter":"api_calls","quantity":5}',
    b"[" * 100_000 + b"]" * 100_000,
    b'\xef\xbb\xbf{"event_id":"bom","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls"}',
]


def corpus() -> list[bytes]:
    generated = hostile_payloads(400, seed=2026)
    return [p for p in SPECIFIC + generated if b"\n" not in p and b"\r" not in p]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work: Path = tmp_path_factory.mktemp("hostile")
    settings = load_settings(None, meters=[{"name": m} for m in METERS])
    lines = corpus()
    started = datetime.now(UTC)
    res = run_pipeline(settings, lines, work)
    return settings, lines, res, work, started


def _lines(folder: Path) -> list[bytes]:
    out: list[bytes] = []
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            out += [ln for ln in f.read_bytes().split(b"\n") if ln.strip()]
    return out


def test_every_hostile_record_ends_in_exactly_one_place_with_the_contracts_reason(run) -> None:
    settings, lines, res, _, started = run
    expected = Counter()
    valid_ids = []
    for p in lines:
        row = validate_row(p, started, settings.time.max_future_skew, frozenset(METERS))
        if row[0]:
            valid_ids.append(row[3])
        else:
            expected[row[1]] += 1
    accepted = [r["event_id"] for r in res.ledger if r["kind"] == "event"]
    assert len(accepted) == len(set(accepted))
    duplicates = sum(res.duplicates.values())
    # conservation: input = accepted + late + duplicates + rejected
    assert len(lines) == len(accepted) + len(res.late) + duplicates + len(res.invalid)
    assert len(valid_ids) == len(accepted) + len(res.late) + duplicates
    assert set(accepted) | {r["event_id"] for r in res.late} == set(valid_ids)
    # the same reason codes the contract gives (the JVM never dead-letters a time the validator
    # accepted: 12-digit fractions were read as malformed by the source)
    assert res.reasons() == expected
    assert {"payload_too_large", "event_too_large", "invalid_character", "quantity_out_of_range",
            "invalid_json"} <= set(expected)


def test_the_issues_cases_end_where_they_should(run) -> None:
    _, _, res, _, _ = run
    events = {r["event_id"]: r for r in res.ledger if r["kind"] == "event"}
    assert "frac12" in events  # a 12-digit fraction of a second is accepted, truncated to ms
    assert events["p2-surr?"]["quantity"] == "40"  # not merged with the lone-surrogate id
    assert "ovf-3" in events and "ovf-1" not in events and "ovf-2" not in events
    ovf = [r for r in res.ledger if r["kind"] == "window" and r["customer_id"] == "ovf"]
    assert sum(float(r["qsum"]) for r in ovf) == 5  # 6e25 are rejected, never wrapped into the sum
    by_reason = Counter(r["reason"] for r in res.invalid)
    assert by_reason["quantity_out_of_range"] >= 2


def test_every_output_record_fits_and_every_dead_letter_identifies_its_original(run) -> None:
    _, lines, res, work, _ = run
    for name in ("ledger", "late", "invalid"):
        for line in _lines(work / "out" / name):
            assert len(line) <= MAX_OUTPUT_RECORD_BYTES, (name, line[:120], len(line))
    by_hash = {hashlib.sha256(p).hexdigest(): p for p in lines}
    truncated = 0
    for d in res.invalid:
        original = by_hash[d["payload_sha256"]]
        assert d["payload_bytes"] == len(original)
        if d["payload"] is not None:
            assert d["payload"].encode() == original and d["payload_b64"] is None
        else:
            kept = base64.b64decode(d["payload_b64"])
            assert original.startswith(kept) and d["payload_truncated"] == (len(original) > DLQ_PAYLOAD_KEEP_BYTES)
            truncated += d["payload_truncated"]
    assert truncated >= 1
