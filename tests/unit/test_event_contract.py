"""The usage event contract (DESIGN.md section 2): every rule and every reason code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.tools.synthetic import SyntheticSpec, generate
from schemas.event import (
    AcceptedEvent,
    Reason,
    Rejection,
    event_json_schema,
    parse_quantity,
    validate_event,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
METERS = frozenset({"api_calls", "storage_gb_hours"})
GOOD = {
    "event_id": "evt-1",
    "event_time": "2026-11-01T10:00:00Z",
    "customer_id": "cust-1",
    "meter": "api_calls",
    "quantity": 3,
    "properties": {"region": "eu"},
}


def check(payload: bytes | str) -> AcceptedEvent | Rejection:
    return validate_event(payload, now=NOW, max_future_skew=SKEW, meters=METERS)


def with_(**changes: object) -> bytes:
    doc = dict(GOOD)
    for k, v in changes.items():
        if v is DROP:
            doc.pop(k)
        else:
            doc[k] = v
    return json.dumps(doc).encode()


DROP = object()


def raw(doc_text: str) -> bytes:
    return doc_text.encode()


REJECTED = [
    # --- payload level ---
    (b"x" * 1_000_001, Reason.PAYLOAD_TOO_LARGE),  # one byte over the 1,000,000-byte limit
    (b"\xff\xfe{}", Reason.INVALID_ENCODING),  # not UTF-8
    (b"", Reason.INVALID_JSON),  # empty record
    (b"{not json", Reason.INVALID_JSON),  # broken JSON
    (raw('{"event_id": "a", "quantity": NaN}'), Reason.INVALID_JSON),  # NaN literal is not JSON
    (raw('{"event_id": "a", "quantity": Infinity}'), Reason.INVALID_JSON),  # nor is Infinity
    (b"[1, 2]", Reason.NOT_AN_OBJECT),  # an array
    (b'"evt"', Reason.NOT_AN_OBJECT),  # a string
    (b"null", Reason.NOT_AN_OBJECT),  # null
    (b"42", Reason.NOT_AN_OBJECT),  # a number
    (raw('{"event_id": "a", "event_id": "b"}'), Reason.DUPLICATE_FIELD),  # ambiguous key
    (with_(qty=1), Reason.UNKNOWN_FIELD),  # a typo must not silently default quantity to 1
    # --- missing fields ---
    (with_(event_id=DROP), Reason.MISSING_FIELD),
    (with_(event_time=DROP), Reason.MISSING_FIELD),
    (with_(customer_id=DROP), Reason.MISSING_FIELD),
    (with_(meter=DROP), Reason.MISSING_FIELD),
    (with_(event_id=None), Reason.MISSING_FIELD),  # null counts as missing
    # --- ids ---
    (with_(event_id=""), Reason.INVALID_EVENT_ID),  # empty
    (with_(event_id="e" * 129), Reason.INVALID_EVENT_ID),  # 129 characters: one over
    (with_(event_id=12345), Reason.INVALID_EVENT_ID),  # a number, not a string
    (with_(event_id=True), Reason.INVALID_EVENT_ID),  # a boolean
    (with_(customer_id=""), Reason.INVALID_CUSTOMER_ID),
    (with_(customer_id="c" * 129), Reason.INVALID_CUSTOMER_ID),
    (with_(customer_id=["c"]), Reason.INVALID_CUSTOMER_ID),
    # --- meter ---
    (with_(meter="API_CALLS"), Reason.INVALID_METER),  # upper case is outside [a-z0-9_.-]
    (with_(meter="api calls"), Reason.INVALID_METER),  # space
    (with_(meter="m" * 65), Reason.INVALID_METER),  # 65 characters
    (with_(meter=""), Reason.INVALID_METER),  # empty
    (with_(meter=7), Reason.INVALID_METER),  # not a string
    (with_(meter="gpu_seconds"), Reason.UNKNOWN_METER),  # well-formed, not declared
    # --- event_time ---
    (with_(event_time="2026-11-01T10:00:00"), Reason.INVALID_EVENT_TIME),  # no offset
    (with_(event_time="2026-11-01 10:00:00Z"), Reason.INVALID_EVENT_TIME),  # space, not T
    (with_(event_time="2026-11-01"), Reason.INVALID_EVENT_TIME),  # a date only
    (with_(event_time="2026-02-30T10:00:00Z"), Reason.INVALID_EVENT_TIME),  # no such day
    (with_(event_time="2026-11-01T24:00:00Z"), Reason.INVALID_EVENT_TIME),  # hour 24
    (with_(event_time="2026-11-01T10:00:60Z"), Reason.INVALID_EVENT_TIME),  # leap second
    (with_(event_time="2026-11-01T10:00:00+25:00"), Reason.INVALID_EVENT_TIME),  # bad offset
    (with_(event_time="1969-12-31T23:59:59Z"), Reason.INVALID_EVENT_TIME),  # before 1970
    (with_(event_time=1761991200000), Reason.INVALID_EVENT_TIME),  # epoch millis, not RFC 3339
    (with_(event_time="2026-11-23T12:05:00.001Z"), Reason.FUTURE_EVENT_TIME),  # 1 ms past skew
    (with_(event_time="2027-01-01T00:00:00Z"), Reason.FUTURE_EVENT_TIME),  # far future
    # --- quantity ---
    (with_(quantity=-1), Reason.NEGATIVE_QUANTITY),
    (with_(quantity="-0.5"), Reason.NEGATIVE_QUANTITY),  # negative as a string
    (with_(quantity="NaN"), Reason.INVALID_QUANTITY),  # NaN as a string
    (with_(quantity="Infinity"), Reason.INVALID_QUANTITY),
    (with_(quantity="1_000"), Reason.INVALID_QUANTITY),  # Python-only digit grouping
    (with_(quantity=" 1"), Reason.INVALID_QUANTITY),  # surrounding space
    (with_(quantity="twelve"), Reason.INVALID_QUANTITY),
    (with_(quantity=""), Reason.INVALID_QUANTITY),
    (with_(quantity=True), Reason.INVALID_QUANTITY),  # booleans are not numbers
    (with_(quantity=[1]), Reason.INVALID_QUANTITY),
    (with_(quantity={"v": 1}), Reason.INVALID_QUANTITY),
    (with_(quantity=None), Reason.INVALID_QUANTITY),  # explicit null is not "absent"
    (raw('{"event_id":"a","event_time":"2026-11-01T10:00:00Z","customer_id":"c","meter":"api_calls",'
         '"quantity":1e400}'), Reason.QUANTITY_OUT_OF_RANGE),  # huge: beyond numeric(38,12)
    (with_(quantity="1" + "0" * 12), Reason.QUANTITY_OUT_OF_RANGE),  # 10^12: 13 integer digits
    (with_(quantity="6e25"), Reason.QUANTITY_OUT_OF_RANGE),  # fits numeric(38,12), but two overflow a window sum
    (with_(quantity="1e-999999999"), Reason.QUANTITY_OUT_OF_RANGE),  # not 0: Decimal.normalize() underflowed it
    (raw('{"event_id":"a","event_time":"2026-11-01T10:00:00Z","customer_id":"c","meter":"api_calls",'
         '"quantity":1e-99999999999999999999}'), Reason.INVALID_JSON),  # beyond Decimal: was an InvalidOperation crash
    (with_(quantity="1e-99999999999999999999"), Reason.QUANTITY_OUT_OF_RANGE),  # as a string
    (with_(quantity="0.0000000000001"), Reason.QUANTITY_OUT_OF_RANGE),  # 13 fractional digits
    # --- properties ---
    (with_(properties=[1, 2]), Reason.INVALID_PROPERTIES),
    (with_(properties="x"), Reason.INVALID_PROPERTIES),
    # --- characters Postgres cannot store (text, jsonb), and lone surrogates (no UTF-8 form) ---
    (with_(event_id="a\x00b"), Reason.INVALID_CHARACTER),  # NUL, sent as \u0000
    (with_(customer_id="\x00"), Reason.INVALID_CHARACTER),
    (with_(properties={"k": "v\x00"}), Reason.INVALID_CHARACTER),  # in a property value
    (with_(properties={"k\x00": "v"}), Reason.INVALID_CHARACTER),  # in a property key
    (with_(properties={"a": [{"b": "\x00"}]}), Reason.INVALID_CHARACTER),  # nested
    (raw('{"event_id":"p2-surr\\ud800","event_time":"2026-11-01T10:00:00Z","customer_id":"c",'
         '"meter":"api_calls"}'), Reason.INVALID_CHARACTER),  # a lone high surrogate
    (raw('{"event_id":"e","event_time":"2026-11-01T10:00:00Z","customer_id":"c\\uDC00",'
         '"meter":"api_calls"}'), Reason.INVALID_CHARACTER),  # a lone low surrogate
    (raw('{"event_id":"e","event_time":"2026-11-01T10:00:00Z","customer_id":"c","meter":"api_calls",'
         '"properties":{"a":"\\u0000"}}'), Reason.INVALID_CHARACTER),  # the compact layout too
    (raw('{"event_id":"a\\u0000","event_time":"2026-11-01T10:00:00.250Z","customer_id":"c","meter":"api_calls"}'),
     Reason.INVALID_CHARACTER),
    # --- an event whose late record (payload + properties, JSON-escaped) would exceed 1 MB ---
    (with_(properties={f"k{i}": '"' * 20 for i in range(8_000)}), Reason.EVENT_TOO_LARGE),  # 420 KB, 1.5 MB escaped
]


@pytest.mark.parametrize(("payload", "reason"), REJECTED, ids=[r.value + f"-{i}" for i, (_, r) in enumerate(REJECTED)])
def test_an_event_breaking_a_rule_is_rejected_with_its_reason_code(payload: bytes, reason: Reason) -> None:
    result = check(payload)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.message
    assert result.message


ACCEPTED = [
    # (payload, expected event_time UTC, expected quantity)
    (with_(), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),  # the plain case, 'Z'
    (with_(event_time="2026-11-01T10:00:00z"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),  # lower z
    (with_(event_time="2026-11-01T11:30:00+01:30"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),  # offset
    # a negative offset
    (with_(event_time="2026-11-01T05:00:00-05:00"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),
    (with_(event_time="2026-11-01T10:00:00.123456789Z"),
     datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC), Decimal(3)),  # nanoseconds truncate to µs
    (with_(event_time="2026-11-01t10:00:00Z"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),  # lower t
    # exactly at the skew
    (with_(event_time="2026-11-23T12:05:00Z"), datetime(2026, 11, 23, 12, 5, tzinfo=UTC), Decimal(3)),
    (with_(event_time="1970-01-01T00:00:00Z"), datetime(1970, 1, 1, tzinfo=UTC), Decimal(3)),  # the epoch
    (with_(quantity=DROP), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(1)),  # default 1
    (with_(quantity="12.5"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal("12.5")),  # a string
    (with_(quantity=0), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(0)),  # zero is allowed
    (with_(quantity="-0"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(0)),  # minus zero is zero
    (with_(quantity="1e3"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(1000)),  # exponent
    (with_(quantity="1.500000000000000"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal("1.5")),  # zeros only
    (with_(quantity="9" * 12 + "." + "9" * 12), datetime(2026, 11, 1, 10, tzinfo=UTC),
     Decimal("9" * 12 + "." + "9" * 12)),  # the largest quantity (< 10^12)
    (with_(quantity="0e-999999999"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(0)),  # exactly zero
    (with_(quantity="1000.0000000000000000"), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(1000)),  # zeros only
    (with_(event_time="2026-11-01T10:00:00.123456789012Z"),
     datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC), Decimal(3)),  # 12 fraction digits (RFC 3339 has no limit)
    (with_(event_id="e-\U0001F600", properties={"emoji": "\U0001F600"}),
     datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),  # a surrogate PAIR (\ud83d\ude00) is a character
    (with_(properties={f"k{i}": "v" * 20 for i in range(10_000)}),
     datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),  # 320 KB of plain properties: the late record fits
    (with_(properties=DROP), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),  # no properties
    (with_(properties=None), datetime(2026, 11, 1, 10, tzinfo=UTC), Decimal(3)),  # null properties
    (with_(event_id="e" * 128, customer_id="c" * 128), datetime(2026, 11, 1, 10, tzinfo=UTC),
     Decimal(3)),  # 128 characters: the limit
]


@pytest.mark.parametrize(("payload", "when", "quantity"), ACCEPTED)
def test_a_valid_event_is_accepted_with_utc_time_and_decimal_quantity(
    payload: bytes, when: datetime, quantity: Decimal
) -> None:
    result = check(payload)
    assert isinstance(result, AcceptedEvent), result
    assert result.event_time == when and result.event_time.tzinfo == UTC
    assert result.quantity == quantity and isinstance(result.quantity, Decimal)


def test_a_json_number_quantity_keeps_every_digit_no_float_in_between() -> None:
    payload = raw(
        '{"event_id":"a","event_time":"2026-11-01T10:00:00Z","customer_id":"c","meter":"api_calls",'
        '"quantity":0.100000000001}'
    )
    result = check(payload)
    assert isinstance(result, AcceptedEvent)
    assert result.quantity == Decimal("0.100000000001")
    big = raw(
        '{"event_id":"a","event_time":"2026-11-01T10:00:00Z","customer_id":"c","meter":"api_calls",'
        '"quantity":123456789012.123456789012}'
    )
    result = check(big)
    assert isinstance(result, AcceptedEvent)
    assert result.quantity == Decimal("123456789012.123456789012")


def test_a_float_reaching_the_quantity_parser_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_quantity(0.1)


def test_the_validator_refuses_a_naive_clock() -> None:
    with pytest.raises(ValueError):
        validate_event(with_(), now=datetime(2026, 11, 23), max_future_skew=SKEW, meters=METERS)  # noqa: DTZ001 - naive on purpose: it must be refused


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_they_are_accepted_or_rejected(data: bytes) -> None:
    assert isinstance(check(data), AcceptedEvent | Rejection)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=6),
                    max_leaves=12))
def test_arbitrary_json_documents_never_raise(doc: object) -> None:
    assert isinstance(check(json.dumps(doc).encode()), AcceptedEvent | Rejection)


def test_the_shipped_json_schema_is_the_one_generated_from_the_model() -> None:
    shipped = json.loads((Path(__file__).parents[2] / "schemas" / "usage_event.schema.json").read_text())
    assert shipped == json.loads(json.dumps(event_json_schema(), sort_keys=True))
    assert set(shipped["required"]) == {"event_id", "event_time", "customer_id", "meter"}
    assert shipped["additionalProperties"] is False


def test_every_synthetic_invalid_record_is_rejected_with_the_reason_it_was_built_for() -> None:
    spec = SyntheticSpec(count=3000, seed=7, invalid_share=0.2, duplicate_share=0.05, days_late_share=0.05,
                         meters=("api_calls",), start=datetime(2026, 11, 1, tzinfo=UTC))
    seen_reasons = set()
    for rec in generate(spec):
        result = check(rec.value)
        if rec.kind == "invalid":
            assert isinstance(result, Rejection), rec
            assert result.reason.value == rec.expected_reason
            seen_reasons.add(result.reason)
        else:
            assert isinstance(result, AcceptedEvent), (rec, result)
    assert len(seen_reasons) >= 6


def test_the_synthetic_generator_is_reproducible_from_its_seed() -> None:
    spec = SyntheticSpec(count=500, seed=3, duplicate_share=0.1, invalid_share=0.1, days_late_share=0.1)
    assert list(generate(spec)) == list(generate(spec))
    other = SyntheticSpec(count=500, seed=4, duplicate_share=0.1, invalid_share=0.1, days_late_share=0.1)
    assert list(generate(spec)) != list(generate(other))


def test_the_meter_name_rule_of_pricing_is_the_one_of_the_event_contract() -> None:
    """pricing/ imports nothing of schemas/, so price books keep their own copy of the rule."""
    from pricing.book import METER_PATTERN as PRICING_METER_PATTERN
    from schemas.event import METER_PATTERN

    assert PRICING_METER_PATTERN == f"^{METER_PATTERN}$"
