"""The validator's fast path (schemas.event.FAST_EVENT_RE) must give exactly what the full
validator gives, for every payload: it may only accept what the full path accepts, with the same
values, and must fall through on anything else."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from operators.validate import validate_row
from schemas import event as ev_mod
from schemas.event import FAST_EVENT_RE, RejectError, Rejection, _validate_document

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
METERS = frozenset({"api_calls", "storage_gb_hours"})


def full_path_row(raw: bytes) -> tuple:
    """validate_row with the fast path switched off."""
    saved = ev_mod.FAST_EVENT_RE
    ev_mod.FAST_EVENT_RE = _NEVER
    try:
        return tuple(validate_row(raw, NOW, SKEW, METERS))
    finally:
        ev_mod.FAST_EVENT_RE = saved


class _Never:
    def fullmatch(self, _text: str) -> None:
        return None


_NEVER = _Never()


def takes_fast_path(raw: bytes) -> bool:
    m = FAST_EVENT_RE.fullmatch(raw.decode("utf-8"))
    return m is not None and ev_mod._fast_path(m, NOW, SKEW, METERS) is not None


def compact(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


# table of boundary cases: (payload, does the fast path take it?)
CASES = [
    # the common shape: taken
    (compact(event_id="e1", event_time="2026-11-23T10:00:00.250Z", customer_id="c", meter="api_calls",
             quantity=5, properties={"a": 1}), True),
    # no quantity (default 1), no properties
    (compact(event_id="e1", event_time="2026-11-23T10:00:00Z", customer_id="c", meter="api_calls"), True),
    # a decimal quantity with trailing zeros keeps its text ("2.50")
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":2.50}', True),
    # 0.000 becomes plain 0
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":0.000}', True),
    # 12 integer digits and 12 fractional digits: the contract's limit (< 10^12), still taken
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":'
     + b"9" * 12 + b"." + b"9" * 12 + b"}", True),
    # 13 integer digits: not the fast path's (the full path rejects it)
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":'
     + b"9" * 13 + b"}", False),
    # a NUL escaped in the properties: not the fast path's (the full path rejects it)
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls",'
     b'"properties":{"a":"\\u0000"}}', False),
    # 12 fraction digits of a second: taken (RFC 3339 sets no limit; truncated like the others)
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00.123456789012Z","customer_id":"c","meter":"api_calls"}',
     True),
    # 13 fractional digits with a trailing zero: the full path normalizes, the fast path falls through
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":1.5000000000000}', False),
    # an id of exactly 128 characters is taken, 129 is not
    (compact(event_id="x" * 128, event_time="2026-11-23T10:00:00Z", customer_id="c", meter="api_calls"), True),
    (compact(event_id="x" * 129, event_time="2026-11-23T10:00:00Z", customer_id="c", meter="api_calls"), False),
    # non-ASCII ids are plain strings
    (compact(event_id="é-ü-€", event_time="2026-11-23T10:00:00Z", customer_id="ç", meter="api_calls"), True),
    # an escaped quote in an id: the full path reads it
    (b'{"event_id":"a\\"b","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls"}', False),
    # an impossible date, before 1970, in the future beyond the skew: full path (rejections)
    (compact(event_id="e1", event_time="2026-02-30T10:00:00Z", customer_id="c", meter="api_calls"), False),
    (compact(event_id="e1", event_time="1969-12-31T23:59:59Z", customer_id="c", meter="api_calls"), False),
    (compact(event_id="e1", event_time="2026-11-23T12:05:00.001Z", customer_id="c", meter="api_calls"), False),
    # exactly now + skew is accepted
    (compact(event_id="e1", event_time="2026-11-23T12:05:00Z", customer_id="c", meter="api_calls"), True),
    # Unicode digits are not RFC 3339 digits
    (compact(event_id="e1", event_time="٢٠٢٦-11-23T10:00:00Z", customer_id="c", meter="api_calls"), False),
    # an offset instead of Z, a lower-case z: full path
    (compact(event_id="e1", event_time="2026-11-23T10:00:00+01:00", customer_id="c", meter="api_calls"), False),
    (compact(event_id="e1", event_time="2026-11-23T10:00:00z", customer_id="c", meter="api_calls"), False),
    # an undeclared meter, a negative quantity, a string quantity: full path
    (compact(event_id="e1", event_time="2026-11-23T10:00:00Z", customer_id="c", meter="gpu_hours"), False),
    (compact(event_id="e1", event_time="2026-11-23T10:00:00Z", customer_id="c", meter="api_calls", quantity=-1), False),
    (compact(event_id="e1", event_time="2026-11-23T10:00:00Z", customer_id="c", meter="api_calls", quantity="5"), False),
    # properties: a duplicate key inside, NaN inside, two objects glued, not an object
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"a":1,"a":2}}', False),
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"a":NaN}}', False),
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"a":1},"quantity":5,"properties":{"b":2}}', False),
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"a":1}} {}', False),
    # a duplicate top-level key after the properties object
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"a":{"b":1}},"meter":"x"}', False),
    # nested properties with decimals
    (b'{"event_id":"e1","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"a":{"b":1.25,"c":[1,2]}}}', True),
]


@pytest.mark.parametrize(("raw", "fast"), CASES)
def test_the_fast_path_gives_what_the_full_validator_gives(raw: bytes, fast: bool) -> None:
    assert takes_fast_path(raw) is fast
    assert tuple(validate_row(raw, NOW, SKEW, METERS)) == full_path_row(raw)


ids = st.one_of(
    st.from_regex(r"\A[a-z0-9-]{1,20}\Z"),  # the usual ids: mostly fast-path material
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=130),
)
times = st.one_of(
    st.datetimes(min_value=datetime(2026, 11, 1), max_value=datetime(2026, 11, 23, 12, 4),  # noqa: DTZ001 - hypothesis takes naive bounds; timezones= makes the drawn values UTC
                 timezones=st.just(UTC)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"),
    st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(2026, 11, 23, 12, 10),  # noqa: DTZ001 - hypothesis takes naive bounds; timezones= makes the drawn values UTC
                 timezones=st.just(UTC)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"),
    st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?[Zz]\Z"),
)
# the quantity as it appears in the JSON text: numbers of every shape, strings, literals
quantities = st.one_of(
    st.integers(min_value=0, max_value=1000).map(str),
    st.integers(min_value=-5, max_value=10**27).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=14).map(str),
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,27})(\.[0-9]{1,14})?([eE][+-]?[0-9])?\Z"),
    st.text(max_size=5).map(json.dumps),
    st.sampled_from(["true", "null", "NaN", "01", "1.", ".5", "1e400"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(event_id=ids, when=times, customer=ids, meter=st.sampled_from(["api_calls", "storage_gb_hours", "gpu", "A"]),
       quantity=st.one_of(st.none(), quantities), properties=st.one_of(st.none(), json_values),
       ascii_only=st.booleans())
@example(event_id="e", when="2026-11-23T10:00:00.123456789Z", customer="c", meter="api_calls",
         quantity="7", properties={"k": [1, {"x": None}]}, ascii_only=False)
def test_any_compact_event_gets_the_same_row_from_both_paths(event_id, when, customer, meter, quantity,
                                                             properties, ascii_only) -> None:
    fields = {"event_id": event_id, "event_time": when, "customer_id": customer, "meter": meter}
    if quantity is not None:
        fields["quantity"] = "\x00Q"  # replaced by the quantity's raw text below
    if properties is not None:
        fields["properties"] = properties
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=ascii_only)
    if quantity is not None:
        text = text.replace('"\\u0000Q"', quantity, 1)
    raw = text.encode()
    assert tuple(validate_row(raw, NOW, SKEW, METERS)) == full_path_row(raw)


def test_the_full_validator_still_rejects_with_reasons_the_fast_path_never_gives() -> None:
    # guards the helper above: with the fast path off, a bad payload is still a rejection
    raw = compact(event_id="e1", event_time="2026-11-23T10:00:00Z", customer_id="c", meter="gpu_hours")
    row = full_path_row(raw)
    assert row[0] is False and row[1] == "unknown_meter"
    with pytest.raises(RejectError):
        _validate_document(raw.decode(), NOW, SKEW, METERS)
    assert isinstance(ev_mod.validate_event(raw, now=NOW, max_future_skew=SKEW, meters=METERS), Rejection)
