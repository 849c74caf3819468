"""Hostile inputs (issue 14): a fuzz suite of generated hostile records through the contract
validator and the JVM fast path's pattern (no crash, one verdict with a reason code, the same
verdict on both paths, every output record within the size cap), and the specific cases the issue
found: oversized dead letters, NUL and lone surrogates, the fast path's quadratic lookahead, 
1e-999999999, 12-digit fractions of a second, deeply nested JSON in produce and reconcile, and
formulas in CSV exports."""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.flink.metering import DLQ_COLUMNS, LATE_COLUMNS, LEDGER_COLUMNS
from operators.validate import VALIDATED_FIELDS, validate_row
from schemas.event import (
    DLQ_PAYLOAD_KEEP_BYTES,
    MAX_OUTPUT_RECORD_BYTES,
    AcceptedEvent,
    Reason,
    jvm_fast_event_pattern,
    validate_event,
)
from tests.hostile_corpus import METERS, hostile_payloads
from tests.unit.test_jvm_fast_path import assert_same_as_validator, claimed

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SKEW = timedelta(days=365 * 1000)  # the future rule is the SQL's, not the pattern's
F = {n: i for i, (n, _) in enumerate(VALIDATED_FIELDS)}
REASONS = {r.value for r in Reason}


def row_of(payload: bytes):
    return validate_row(payload, NOW, SKEW, frozenset(METERS))


def record_bytes(cols: list[tuple[str, str]], values: dict) -> int:
    """The size of a record as the job's JSON sinks write it (UTF-8, non-ASCII unescaped)."""
    rec = {c: values.get(c, 2**62 if t == "BIGINT" else None) for c, t in cols}
    return len(json.dumps(rec, ensure_ascii=False).encode("utf-8"))


def output_sizes(payload: bytes, row) -> list[int]:
    """Sizes of the records the job writes for this payload: ledger and late when accepted (the
    largest id and number values), the dead letter when rejected."""
    r = {n: row[i] for n, i in F.items()}
    if r["ok"]:
        text = payload.decode("utf-8")
        common = {"customer_id": r["customer_id"], "meter": r["meter"], "event_id": r["event_id"],
                  "quantity": r["quantity"], "properties": r["properties"], "src_topic": "t" * 249}
        return [record_bytes(LEDGER_COLUMNS, {**common, "kind": "event"}),
                record_bytes(LATE_COLUMNS, {**common, "payload": text, "watermark": "2026-11-23 10:00:00.000"})]
    dlq = {"reason": r["reason"], "message": r["message"], "payload_b64": r["payload_b64"],
           "payload": r["payload_text"], "payload_truncated": r["payload_bytes"] > DLQ_PAYLOAD_KEEP_BYTES,
           "payload_bytes": r["payload_bytes"], "payload_sha256": r["payload_sha256"], "src_topic": "t" * 249}
    return [record_bytes(DLQ_COLUMNS, dlq)]


def test_fuzz_ten_thousand_hostile_records_one_verdict_same_on_both_paths_every_record_fits() -> None:
    payloads = hostile_payloads(10_000, seed=14)
    verdicts: dict[str, int] = {}
    claimed_n = big = 0
    for p in payloads:
        row = row_of(p)  # never raises
        reason = row[F["reason"]]
        assert (row[F["ok"]] is True and reason is None) or (row[F["ok"]] is False and reason in REASONS), p[:200]
        verdicts[reason or "accepted"] = verdicts.get(reason or "accepted", 0) + 1
        m = claimed(p)
        if m is not None:
            claimed_n += 1
            assert_same_as_validator(p, m)  # the JVM accepts only what the validator accepts, same fields
        assert max(output_sizes(p, row)) <= MAX_OUTPUT_RECORD_BYTES, (p[:100], len(p), reason)
        if not row[F["ok"]]:
            assert row[F["payload_sha256"]] == hashlib.sha256(p).hexdigest() and row[F["payload_bytes"]] == len(p)
        big += len(p) >= 1_000_000
    # the corpus covers both paths, sizes up to and over 1 MB, and most reason codes
    assert claimed_n > 500 and verdicts["accepted"] > 2000 and big > 10, (claimed_n, verdicts, big)
    assert len(verdicts) >= 18, verdicts


_field_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()),
                      max_size=12) | st.sampled_from(["\x00", "\ud800", "a\udfff", "\U0001F600", "\\u0000"])


@settings(max_examples=300, deadline=None)
@given(_field_text, st.sampled_from(["event_id", "customer_id", "meter", "event_time", "pkey", "pvalue"]))
def test_any_character_in_any_field_never_crashes_and_the_fast_path_never_claims_what_the_validator_rejects(
    text: str, field: str
) -> None:
    d = {"event_id": "e", "event_time": "2026-11-23T10:00:00Z", "customer_id": "c", "meter": "api_calls",
         "quantity": 1, "properties": {"k": "v"}}
    if field == "pkey":
        d["properties"] = {text: "v"}
    elif field == "pvalue":
        d["properties"] = {"k": text}
    else:
        d[field] = text
    for ensure_ascii in (True, False):
        payload = json.dumps(d, separators=(",", ":"), ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
        row = row_of(payload)
        if re.search("[\x00\ud800-\udfff]", text) and row[F["ok"]] is False:
            assert row[F["reason"]] in {"invalid_character", "invalid_encoding", "invalid_meter",
                                        "invalid_event_time"}, row
        if re.search("[\x00\ud800-\udfff]", text):
            assert row[F["ok"]] is False  # never stored
        m = claimed(payload)
        if m is not None:
            assert_same_as_validator(payload, m)


# --- 1. every output record fits the broker --------------------------------------------------

def test_a_rejected_payload_of_any_kind_becomes_a_dead_letter_that_fits_one_megabyte() -> None:
    payloads = [
        b"x" * 1_000_001,  # payload_too_large: was a 2.3 MB dead letter (base64 + text)
        b'{"event_id":"' + b"\\\"" * 499_000 + b'"}',  # quotes: text doubles when escaped
        b"\x01" * 999_999,  # control characters: 6 bytes each when escaped
        b"\xff" * 999_999,  # not UTF-8
        json.dumps({"event_id": "e", "properties": {"q": '"' * 400_000}}).encode(),  # missing fields, 800 KB
    ]
    for p in payloads:
        row = row_of(p)
        assert row[F["ok"]] is False
        (size,) = output_sizes(p, row)
        assert size <= MAX_OUTPUT_RECORD_BYTES, (p[:30], size)
        kept = row[F["payload_text"]].encode() if row[F["payload_text"]] is not None else None
        if kept is None:
            import base64

            prefix = base64.b64decode(row[F["payload_b64"]])
            assert p.startswith(prefix) and len(prefix) == min(len(p), DLQ_PAYLOAD_KEEP_BYTES)
        else:
            assert kept == p
    assert row_of(payloads[0])[F["reason"]] == "payload_too_large"


def test_a_valid_event_whose_late_record_would_not_fit_is_rejected_and_one_that_fits_is_accepted() -> None:
    def event(props: dict) -> bytes:
        return json.dumps({"event_id": "e", "event_time": "2026-11-01T10:00:00Z", "customer_id": "c",
                           "meter": "api_calls", "properties": props}).encode()

    # ~800 KB with many properties: escaped twice in the late record (payload + properties)
    too_big = event({f"prop-{i:06d}": "value-" + "x" * 20 for i in range(18_000)})
    assert 790_000 < len(too_big) < 1_000_000
    row = row_of(too_big)
    assert row[F["reason"]] == Reason.EVENT_TOO_LARGE
    assert max(output_sizes(too_big, row)) <= MAX_OUTPUT_RECORD_BYTES
    fits = event({f"prop-{i:06d}": "value-" + "x" * 20 for i in range(8_000)})  # 370 KB
    row = row_of(fits)
    assert row[F["ok"]] is True
    assert max(output_sizes(fits, row)) <= MAX_OUTPUT_RECORD_BYTES


# --- 2, 3. characters Postgres cannot store, lone surrogates ------------------------------------

def test_nul_and_lone_surrogates_are_rejected_and_a_legitimate_question_mark_id_is_not_merged() -> None:
    base = '{"event_id":"%s","event_time":"2026-11-01T10:00:00Z","customer_id":"%s","meter":"api_calls"%s}'
    for p in (base % ("a\\u0000", "c", ""), base % ("e", "\\u0000", ""),
              base % ("e", "c", ',"properties":{"a":"\\u0000"}'), base % ("p2-surr\\ud800", "c", ""),
              base % ("e", "c", ',"properties":{"\\udc00":1}')):
        row = row_of(p.encode())
        assert row[F["reason"]] == Reason.INVALID_CHARACTER, p
        assert claimed(p.encode()) is None  # the JVM fast path does not claim it either
    legit = validate_event((base % ("p2-surr?", "c", ',"quantity":40')).encode(), now=NOW, max_future_skew=SKEW,
                           meters=frozenset(METERS))
    assert isinstance(legit, AcceptedEvent) and legit.event_id == "p2-surr?"


# --- 4. the fast path's pattern costs time linear in the payload ---------------------------------

def _many_keys(n: int) -> str:
    props = ",".join(f'"k{i}":{i}' for i in range(n))
    return ('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls",'
            '"properties":{' + props + "}}")


def _best(f, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def test_the_fast_path_pattern_on_a_payload_with_thousands_of_keys_costs_no_more_than_a_linear_scan() -> None:
    pattern = re.compile(jvm_fast_event_pattern(METERS))
    linear = re.compile(r"[\s\S]*")  # the reference: one pass over the same text
    # 4,000 keys (50 KB): the old pattern's duplicate-key lookahead took ~1,800 times a linear
    # scan here (quadratic: 40,000 keys / 560 KB took the job from 10 s to 52 s)
    text = _many_keys(4000)
    assert pattern.search(text) is None  # more than 64 properties: the validator's
    ratio = _best(lambda: pattern.search(text)) / _best(lambda: linear.match(text))
    assert ratio < 20, ratio
    # the largest payload the pattern claims (64 keys of 128 characters, values of 1024): the
    # duplicate check runs only there, on a bounded text
    props = ",".join(f'"{"k" * 124}{i:04d}":"{"v" * 1024}"' for i in range(64))
    claimable = ('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls",'
                 '"properties":{' + props + "}}")
    assert pattern.search(claimable) is not None
    assert _best(lambda: pattern.search(claimable), 2) < 200 * _best(lambda: pattern.search(_many_keys(40_000)))


# --- 5, 11. numbers and times -----------------------------------------------------------------

def test_tiny_exponents_and_window_overflowing_quantities_are_rejected_long_fractions_accepted() -> None:
    base = '{"event_id":"e","event_time":"%s","customer_id":"c","meter":"api_calls","quantity":%s}'
    for q in ('"1e-999999999"', "1e-999999999", "6e25", '"1000000000000"'):
        assert row_of((base % ("2026-11-01T10:00:00Z", q)).encode())[F["reason"]] == Reason.QUANTITY_OUT_OF_RANGE, q
    row = row_of((base % ("2026-11-01T10:00:00.123456789012Z", "5")).encode())
    assert row[F["ok"]] is True and row[F["event_time_ms"]] == int(datetime(2026, 11, 1, 10, tzinfo=UTC).timestamp()
                                                                   * 1000) + 123
    # the largest quantity: 10^14 of them still fit numeric(38, 12), where the window sums live
    largest = Decimal("999999999999.999999999999")
    assert validate_event((base % ("2026-11-01T10:00:00Z", largest)).encode(), now=NOW, max_future_skew=SKEW,
                          meters=frozenset(METERS)).quantity == largest
    assert largest * 10**14 < Decimal(10) ** 26


# --- 8. deeply nested JSON ----------------------------------------------------------------------

def test_deeply_nested_json_is_sent_by_produce_and_read_as_unparseable_by_reconcile(tmp_path: Path, caplog) -> None:
    from jobs.batch.reconcile import _attribute
    from jobs.tools.produce import records_from_jsonl
    from pricing.periods import parse_period
    from schemas.records import dead_letter_original as _dlq_original

    deep = b"[" * 200_000 + b"]" * 200_000
    f = tmp_path / "deep.jsonl"
    f.write_bytes(b'{"customer_id":"c1"}\n' + deep + b"\n" + b'{"customer_id":"c2"}\n')
    recs = list(records_from_jsonl(f))  # was: RecursionError
    assert [r.key for r in recs] == [b"c1", b"", b"c2"] and recs[1].value == deep
    assert sum("nested too deeply" in m for m in caplog.messages) == 1
    period = parse_period("2026-11")
    ts = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp() * 1000)
    assert _attribute(deep, ts, period) == (True, ("?", "?"))  # was: RecursionError
    dead = json.dumps({"reason": "invalid_json", "payload": deep.decode()}).encode()
    assert _attribute(_dlq_original(dead), ts, period) == (True, ("?", "?"))
    # a dead letter that kept only the bytes (not UTF-8, or too long) is attributed by timestamp,
    # as its input record is: the same key on both sides
    cesu = b'{"event_id":"\xed\xa0\x80","customer_id":"c","meter":"m"}'
    dead = json.dumps({"payload": None, "payload_b64": "x", "payload_truncated": False}).encode()
    assert _attribute(_dlq_original(dead), ts, period) == _attribute(cesu, ts, period) == (True, ("?", "?"))
    bom = b'\xef\xbb\xbf{"customer_id":"c","meter":"m"}'  # json.loads(bytes) would skip the BOM; the job does not
    assert _attribute(bom, ts, period) == _attribute(bom.decode(), ts, period) == (True, ("?", "?"))


# --- 9. formulas in CSV ---------------------------------------------------------------------------

def test_csv_cells_that_start_a_formula_are_quoted_and_numbers_stay_numbers() -> None:
    from jobs.batch.export import _csv_cell

    for s in ('=HYPERLINK("http://x","click")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-1+2", "\tx", "\rx"):
        assert _csv_cell(s) == "'" + s
    assert _csv_cell("cust-1") == "cust-1" and _csv_cell("") == ""
    assert _csv_cell(Decimal("-1.45")) == "-1.45" and _csv_cell(-3) == "-3"
    assert _csv_cell(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00+00:00"
