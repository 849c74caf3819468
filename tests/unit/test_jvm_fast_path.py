"""The JVM fast path's pattern (schemas.event.jvm_fast_event_pattern), checked in Python: the
metering job accepts what it matches without calling the validator, so every payload it matches
must be one the contract accepts, and each group must hold exactly the text of the validator's
row for that field. The pattern is written in the common subset of Python's re and Java's regex;
tests/pipeline/test_fast_path_pipeline.py runs the same corpus through Flink SQL."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.tools.synthetic import SyntheticSpec, generate
from operators.validate import validate_row
from schemas.event import JVM_FAST_GROUPS, jvm_fast_event_pattern
from tests.fast_path_corpus import CASES, METERS, random_payloads

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SKEW = timedelta(days=365 * 1000)  # the future rule is the SQL's, not the pattern's
PATTERN = re.compile(jvm_fast_event_pattern(METERS))


def claimed(payload: bytes) -> re.Match[str] | None:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        # the JVM decodes with replacement characters, which the pattern never matches
        text = payload.decode("utf-8", errors="replace")
    return PATTERN.search(text)


def assert_same_as_validator(payload: bytes, m: re.Match[str]) -> None:
    row = validate_row(payload, NOW, SKEW, frozenset(METERS))
    assert row[0] is True, (payload, row)
    g = {name: m.group(i) for name, i in JVM_FAST_GROUPS.items()}
    assert (row[3], row[4], row[5]) == (g["event_id"], g["customer_id"], g["meter"])
    assert row[7] == (g["quantity"] if g["quantity"] is not None else "1")
    assert row[8] == g["properties"]
    t = g["event_time"].replace("Z", "+0000")
    parsed = (datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%f%z") if "." in t
              else datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z"))
    assert row[6] == int(parsed.timestamp() * 1000)


@pytest.mark.parametrize(("payload", "expected"), CASES, ids=[f"case-{i}" for i in range(len(CASES))])
def test_the_pattern_claims_exactly_the_boundary_cases_it_should(payload: bytes, expected: bool) -> None:
    m = claimed(payload)
    assert (m is not None) == expected, payload
    if m is not None:
        assert_same_as_validator(payload, m)


def test_whatever_the_pattern_claims_among_near_misses_the_validator_accepts_with_the_same_fields() -> None:
    payloads = random_payloads(3000)
    hits = 0
    for p in payloads:
        m = claimed(p)
        if m is not None:
            hits += 1
            assert_same_as_validator(p, m)
    # the corpus exercises both sides
    assert 100 < hits < len(payloads) - 100, hits


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F) | st.sampled_from('"\\{}:,ä0'),
               max_size=40),
       st.sampled_from(["event_id", "customer_id", "meter", "quantity", "properties", "event_time"]))
def test_any_text_in_any_field_is_claimed_only_if_the_validator_agrees(text: str, field: str) -> None:
    good = json.dumps({"event_id": "e", "event_time": "2026-11-23T10:00:00Z", "customer_id": "c",
                       "meter": "api_calls", "quantity": 1, "properties": {"a": 1}}, separators=(",", ":"))
    # splice raw text where the field's value goes (valid JSON or not)
    key = f'"{field}":'
    start = good.index(key) + len(key)
    end = start + len(json.dumps(json.loads(good)[field], separators=(",", ":")))
    payload = (good[:start] + text + good[end:]).encode()
    m = claimed(payload)
    if m is not None:
        assert_same_as_validator(payload, m)


def test_the_producers_compact_layout_is_claimed() -> None:
    # what jobs.tools.synthetic (and the demo, and the benchmark) produce must take the fast path
    spec = SyntheticSpec(count=2000, customers=50, meters=("api_calls", "storage_gb_hours"),
                         out_of_order_share=0.1, days_late_share=0.01)
    valid = [r.value for r in generate(spec) if r.kind in ("valid", "days_late")]
    assert valid and all(claimed(v) for v in valid)


def test_the_pattern_only_names_declared_meters_and_refuses_odd_names() -> None:
    assert claimed(json.dumps({"event_id": "e", "event_time": "2026-11-23T10:00:00Z", "customer_id": "c",
                               "meter": "gpu.seconds"}, separators=(",", ":")).encode())
    with pytest.raises(ValueError, match="meter names"):
        jvm_fast_event_pattern(["ok", "bad|name"])
    # no meter declared: nothing is claimed
    none = re.compile(jvm_fast_event_pattern([]))
    assert none.search(CASES[0][0].decode()) is None


def test_the_longest_claimable_payload_stays_under_the_size_limit() -> None:
    from schemas.event import MAX_PAYLOAD_BYTES

    props = {("k" * 124) + f"{i:04d}": "v" * 1024 for i in range(64)}
    doc = {"event_id": "x" * 128, "event_time": "2026-11-23T10:00:00.000Z", "customer_id": "y" * 128,
           "meter": "storage_gb_hours", "quantity": 1, "properties": props}
    text = json.dumps(doc, separators=(",", ":")).replace('"quantity":1', '"quantity":' + "9" * 12 + "." + "9" * 12)
    assert PATTERN.search(text) is not None
    assert len(text) < MAX_PAYLOAD_BYTES
