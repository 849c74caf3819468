"""The usage event contract (DESIGN.md section 2) and its validator.

``UsageEvent`` is the pydantic model: the JSON Schema shipped in ``schemas/usage_event.schema.json``
is generated from it (``meterflow schema event``). :func:`validate_event` turns one raw Kafka value
(bytes) into either an :class:`AcceptedEvent` or a :class:`Rejection` with a machine-readable
reason code — it never raises for bad input and never drops anything.

Quantities are parsed as ``Decimal`` straight from the JSON text (``json.loads(parse_float=Decimal)``):
pydantic's own JSON parser goes through binary floats and would lose digits, so it is not used on
raw payloads.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_PAYLOAD_BYTES = 1_000_000  # 1 MB (decimal megabyte), payload bytes as received
# Every record the metering job writes (ledger, late, dead letter) is at most this many bytes of
# JSON, so that it always fits the broker's max.message.bytes (Kafka's default, which
# scripts/stack.sh keeps: 1,048,588) and the producers' max.request.size (1,048,576) with room for
# the key, headers and batch overhead. Dead letters are truncated to fit (jobs/flink/metering.py
# DLQ_COLUMNS); an accepted event whose ledger or late record would not fit is rejected here
# (EVENT_TOO_LARGE) — see docs/RELIABILITY.md.
MAX_OUTPUT_RECORD_BYTES = 1_000_000
# Room for everything in a late/ledger record but the payload and properties text: the field
# names, ids of 128 characters (at most 6 bytes each once JSON-escaped), numbers, the watermark.
OUTPUT_RECORD_OVERHEAD_BYTES = 4096
# A dead letter keeps its payload's text when that fits MAX_OUTPUT_RECORD_BYTES JSON-escaped, else
# the first DLQ_PAYLOAD_KEEP_BYTES in base64 (800,000 characters); messages are cut to
# DLQ_MESSAGE_MAX_CHARS. Either way it fits: dead_letter_payload.
DLQ_PAYLOAD_KEEP_BYTES = 600_000
DLQ_MESSAGE_MAX_CHARS = 500
MAX_ID_LENGTH = 128
# Quantities: at most 12 integer and 12 fractional digits (< 10^12 per event). Stored as
# numeric(38, 12), which holds < 10^26: a window sum (Flink SQL SUM over DECIMAL(38, 12), which
# does not fail on overflow but silently restarts from NULL) or a period's invoice line can only
# overflow after more than 10^14 events of one (customer, meter) — 38 million a second for a
# whole month. Larger quantities must be sent in a larger unit, or split.
QUANTITY_INTEGER_DIGITS = 12
QUANTITY_FRACTION_DIGITS = 12
QUANTITY_MAX_EXCLUSIVE = Decimal(10) ** QUANTITY_INTEGER_DIGITS
# Characters Postgres text and jsonb cannot store (NUL), and lone UTF-16 surrogates (no UTF-8
# form: the JVM would turn them into '?', merging distinct event ids in dedup).
UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
MIN_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)

# The meter-name rule (DESIGN.md §2), written once for schemas/: the validators, the fast path, the
# JSON Schema and the config use it; pricing/book.py keeps its own copy (pricing imports nothing of
# schemas/) and tests/unit/test_event_contract.py pins the two equal.
METER_PATTERN = r"[a-z0-9_.-]{1,64}"
METER_RE = re.compile(METER_PATTERN)
RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # RFC 3339 digits are ASCII (the JVM's event-time parser agrees)
)
DECIMAL_STRING_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# The fast path: the compact layout producers usually send (fields in the documented order, no
# whitespace, plain strings, UTC 'Z' time, a plain non-negative JSON number). A payload it does
# not match, or any doubt (a rejection, odd time, properties that are not exactly one object),
# falls through to the full validator, so both give the same answer (tests/unit/test_event_fast_path.py).
_PLAIN = r'[^"\\\x00-\x1f]{1,128}'
FAST_EVENT_RE = re.compile(
    r'\{"event_id":"(' + _PLAIN + r')","event_time":"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z"'
    r',"customer_id":"(' + _PLAIN + r')","meter":"(' + METER_PATTERN + r')"'
    r'(?:,"quantity":((?:0|[1-9]\d{0,11})(?:\.\d{1,12})?))?(?:,"properties":(\{.*\}))?\}',
    re.DOTALL | re.ASCII,  # ASCII: \d is [0-9] only, as in JSON and RFC 3339
)


# The JVM fast path (jobs/flink/metering.py): the metering job accepts a payload in Flink SQL, without
# calling Python, when it matches this pattern. It is written in the common subset of Python's `re`
# and `java.util.regex` (no \d, \s or named groups; explicit \x ranges; the end of input as
# (?![\s\S]) because Java's $ also matches before a final line break), so the unit tests check in
# Python exactly what the JVM evaluates. It is narrower than FAST_EVENT_RE: a payload it matches
# is one validate_event ACCEPTS, and every field the job needs is a verbatim substring, equal to
# what the validator's row would hold (tests/unit/test_jvm_fast_path.py):
#   - printable ASCII strings without escapes (no " or \), ids of 1-128 characters;
#   - event_time exactly yyyy-MM-ddTHH:mm:ss.SSSZ or yyyy-MM-ddTHH:mm:ssZ, a real date and time
#     from 1970 on (the pattern itself checks month lengths; 29 February goes to the validator);
#   - meter: one of the declared names, literally;
#   - quantity absent (1) or a JSON number whose decimal text is canonical (str(Decimal(q)) == q:
#     no 0.0, no 0.0000001 that Python would print as 1E-7), within numeric(38, 12);
#   - properties absent, or a flat object of at most 64 distinct keys with string, integer,
#     true/false/null values, in a form json.dumps gives back unchanged.
# Every group is a field: JVM_FAST_GROUPS. The payload is at most ~85 KB (< MAX_PAYLOAD_BYTES).
_JCHAR = r"[\x20\x21\x23-\x5b\x5d-\x7e]"  # printable ASCII except " and \
_JDATE = (
    r"(?:19[7-9][0-9]|[2-9][0-9]{3})-"
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
)
_JTIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{3})?Z"
_JQUANTITY = r"[1-9][0-9]{0,11}(?:\.[0-9]{1,12})?|0|0\.(?=[0-9]{0,5}[1-9])[0-9]{1,12}"
_JVALUE = r'"' + _JCHAR + r'{0,1024}"|true|false|null|-?[1-9][0-9]{0,17}|0'
_JPAIR = r'"' + _JCHAR + r"{1,128}" + r'":(?:' + _JVALUE + r")"
_JOBJECT = r"\{(?:" + _JPAIR + "(?:," + _JPAIR + r"){0,63})?\}"
# field -> its group number in the pattern (group 6 is the duplicate-key check)
JVM_FAST_GROUPS = {"event_id": 1, "event_time": 2, "customer_id": 3, "meter": 4, "quantity": 5, "properties": 7}


def jvm_fast_event_pattern(meters: Iterable[str]) -> str:
    """The fast-path pattern for these declared meters (a search pattern anchored at both ends)."""
    names = sorted(set(meters))
    bad = [m for m in names if not METER_RE.fullmatch(m)]
    if bad:
        raise ValueError(f"meter names must match {METER_PATTERN}: {bad}")
    meter = "|".join(n.replace(".", r"\.") for n in names) or "(?!)"
    return (
        r'^\{"event_id":"(' + _JCHAR + r'{1,128})","event_time":"(' + _JDATE + "T" + _JTIME + ')"'
        r',"customer_id":"(' + _JCHAR + r'{1,128})","meter":"(' + meter + ')"'
        r'(?:,"quantity":(' + _JQUANTITY + "))?"
        # properties: first, that the rest of the payload is a flat object of at most 64 pairs
        # (linear: each pair's pattern is deterministic), so that the duplicate-key check after it
        # never scans a long payload (it is quadratic in the payload's length);
        r'(?:,"properties":(?=' + _JOBJECT + r'\}(?![\s\S]))'
        # then no key twice (a key is the only "…": in a flat object of plain strings); the
        # capture is that object again, which the first lookahead checked (not matched twice)
        r'(?!\{.*"(' + _JCHAR + r'*)":.*"\6":)'
        r"(\{[\s\S]*\}))?"
        r"\}(?![\s\S])"
    )


class Reason(StrEnum):
    """Why an event was rejected. Stable codes: dashboards and the DLQ consumers key on them."""

    PAYLOAD_TOO_LARGE = "payload_too_large"  # more than 1,000,000 bytes
    INVALID_ENCODING = "invalid_encoding"  # not UTF-8
    INVALID_JSON = "invalid_json"  # not parseable JSON, or NaN/Infinity literals
    DUPLICATE_FIELD = "duplicate_field"  # the same key twice in one object
    NOT_AN_OBJECT = "not_an_object"  # valid JSON but not an object
    MISSING_FIELD = "missing_field"  # event_id, event_time, customer_id or meter absent/null
    UNKNOWN_FIELD = "unknown_field"  # a top-level key the contract does not define
    INVALID_EVENT_ID = "invalid_event_id"  # not a string of 1-128 characters
    INVALID_CUSTOMER_ID = "invalid_customer_id"  # not a string of 1-128 characters
    INVALID_METER = "invalid_meter"  # not a string matching [a-z0-9_.-]{1,64}
    UNKNOWN_METER = "unknown_meter"  # well-formed but not declared in the configuration
    INVALID_EVENT_TIME = "invalid_event_time"  # not RFC 3339 with an offset, or before 1970
    FUTURE_EVENT_TIME = "future_event_time"  # further in the future than max_future_skew
    INVALID_QUANTITY = "invalid_quantity"  # not a JSON number or decimal string; NaN, Infinity
    NEGATIVE_QUANTITY = "negative_quantity"  # below zero
    QUANTITY_OUT_OF_RANGE = "quantity_out_of_range"  # 10^12 or more, or more than 12 fractional digits
    INVALID_PROPERTIES = "invalid_properties"  # present but not an object
    INVALID_CHARACTER = "invalid_character"  # a string holds NUL or a lone UTF-16 surrogate
    EVENT_TOO_LARGE = "event_too_large"  # its ledger or late record would exceed MAX_OUTPUT_RECORD_BYTES


class UsageEvent(BaseModel):
    """One usage event, as producers send it (one JSON object per Kafka record, key = customer_id)."""

    model_config = ConfigDict(
        extra="forbid",
        title="meterflow usage event",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "evt-2026-11-01-000001",
                    "event_time": "2026-11-01T10:15:30.250+01:00",
                    "customer_id": "cust-0042",
                    "meter": "api_calls",
                    "quantity": 12,
                    "properties": {"endpoint": "/v1/search", "region": "eu-west-1"},
                }
            ]
        },
    )

    event_id: str = Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="Idempotency key: a second event with the same id is a duplicate, counted once.",
    )
    event_time: datetime = Field(
        description="When the usage happened: RFC 3339 with an offset ('Z' or +hh:mm). "
        "Decides window and billing period, in UTC.",
        json_schema_extra={
            "format": "date-time",
            "pattern": r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
        },
    )
    customer_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    meter: str = Field(
        pattern=f"^{METER_PATTERN}$",
        description="What was used; must be declared in the configuration.",
    )
    quantity: Decimal = Field(
        default=Decimal(1),
        ge=0,
        max_digits=QUANTITY_INTEGER_DIGITS + QUANTITY_FRACTION_DIGITS,
        decimal_places=QUANTITY_FRACTION_DIGITS,
        description="A JSON number or a decimal string, finite, >= 0 and < 10^12 (at most 12 integer "
        "and 12 fractional digits); read as a decimal, never as a binary float. Default 1.",
    )
    properties: dict[str, Any] | None = Field(default=None, description="Optional; kept for audit.")


ALLOWED_FIELDS = frozenset(UsageEvent.model_fields)
REQUIRED_FIELDS = ("event_id", "event_time", "customer_id", "meter")


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    event_id: str
    event_time: datetime  # aware, UTC
    customer_id: str
    meter: str
    quantity: Decimal
    properties: dict[str, Any] | None

    @property
    def event_time_ms(self) -> int:
        return _epoch_ms(self.event_time)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    message: str


class RejectError(Exception):
    """Raised inside validation with the reason and message of the :class:`Rejection` it becomes."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        self.message = message


def _epoch_ms(dt: datetime) -> int:
    delta = dt - MIN_EVENT_TIME
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _no_constants(name: str) -> Any:
    raise RejectError(Reason.INVALID_JSON, f"JSON literal {name} is not allowed")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise RejectError(Reason.DUPLICATE_FIELD, f"key {k!r} appears more than once")
            seen.add(k)
    return d


def _decimal(text: str) -> Decimal:
    """A JSON number with a fraction or exponent, exactly; one whose exponent is beyond what
    Decimal holds (1e-99999999999999999999) is refused instead of raising InvalidOperation."""
    try:
        return Decimal(text)
    except InvalidOperation:
        raise RejectError(Reason.INVALID_JSON, f"number {text[:40]} is out of any decimal's range") from None


_decoder = json.JSONDecoder(
    parse_float=_decimal, parse_constant=_no_constants, object_pairs_hook=_pairs
)


def parse_event_time(value: Any) -> datetime:
    """RFC 3339 with an offset -> aware UTC datetime (fractions beyond microseconds truncated)."""
    if not isinstance(value, str):
        raise RejectError(Reason.INVALID_EVENT_TIME, "event_time must be an RFC 3339 string")
    m = RFC3339_RE.fullmatch(value)
    if not m:
        raise RejectError(
            Reason.INVALID_EVENT_TIME,
            f"event_time {value[:64]!r} is not RFC 3339 with an offset (e.g. 2026-11-01T10:00:00Z)",
        )
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    try:
        micros = int((frac or "").ljust(6, "0")[:6])
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micros, tzinfo=UTC)
    except ValueError as e:
        raise RejectError(Reason.INVALID_EVENT_TIME, f"event_time {value!r}: {e}") from None
    if not z:
        oh_i, om_i = int(oh), int(om)
        if oh_i > 23 or om_i > 59:
            raise RejectError(Reason.INVALID_EVENT_TIME, f"event_time {value!r}: offset out of range")
        offset = timedelta(hours=oh_i, minutes=om_i)
        dt = dt - offset if sign == "+" else dt + offset
    if dt < MIN_EVENT_TIME:
        raise RejectError(Reason.INVALID_EVENT_TIME, f"event_time {value!r} is before 1970-01-01")
    return dt


def parse_quantity(value: Any) -> Decimal:
    """A JSON number (already Decimal/int from the decoder) or a decimal string -> Decimal."""
    if isinstance(value, bool) or value is None:
        raise RejectError(Reason.INVALID_QUANTITY, f"quantity must be a number, got {value!r}")
    if isinstance(value, float):
        raise TypeError("quantity reached the validator as a binary float; parse JSON with Decimal")
    if isinstance(value, int):
        q = Decimal(value)
    elif isinstance(value, Decimal):
        q = value
    elif isinstance(value, str):
        if not DECIMAL_STRING_RE.fullmatch(value):
            raise RejectError(
                Reason.INVALID_QUANTITY, f"quantity {value[:64]!r} is not a decimal number"
            )
        try:
            q = Decimal(value)
        except InvalidOperation:
            raise RejectError(Reason.QUANTITY_OUT_OF_RANGE, f"quantity {value[:64]!r} is out of range") from None
    else:
        raise RejectError(Reason.INVALID_QUANTITY, f"quantity must be a number, got {type(value).__name__}")
    if not q.is_finite():
        raise RejectError(Reason.INVALID_QUANTITY, "quantity must be finite")
    if q < 0:
        raise RejectError(Reason.NEGATIVE_QUANTITY, f"quantity {q} is negative")
    if q == 0:
        return Decimal(0)  # -0, 0.00 and 0E-999999999 are exactly zero
    # Digits and exponent without trailing zeros, from the tuple: Decimal.normalize() would round
    # to the context, turning 1E-999999999 into 0 (an underflow, not an exact zero).
    sign, digits, exp = q.as_tuple()
    assert isinstance(exp, int)
    trailing = len(digits) - len(bytes(digits).rstrip(b"\x00"))
    digits, exp = digits[: len(digits) - trailing], exp + trailing
    if -exp > QUANTITY_FRACTION_DIGITS:
        raise RejectError(
            Reason.QUANTITY_OUT_OF_RANGE,
            f"quantity has more than {QUANTITY_FRACTION_DIGITS} fractional digits",
        )
    if len(digits) + exp > QUANTITY_INTEGER_DIGITS:
        raise RejectError(
            Reason.QUANTITY_OUT_OF_RANGE,
            f"quantity is {QUANTITY_MAX_EXCLUSIVE:,} or more (at most {QUANTITY_INTEGER_DIGITS} integer digits)",
        )
    if trailing and q.as_tuple().exponent < -QUANTITY_FRACTION_DIGITS:  # type: ignore[operator]  # finite q: int exponent
        # zeros beyond the 12th fractional digit are harmless (1.5000000000000 == 1.5)
        q = Decimal((sign, digits, exp))
    return q


def _check_id(value: Any, field: str, reason: Reason) -> str:
    if not isinstance(value, str) or not (1 <= len(value) <= MAX_ID_LENGTH):
        shown = value if not isinstance(value, str) else f"a string of {len(value)} characters"
        raise RejectError(reason, f"{field} must be a string of 1-{MAX_ID_LENGTH} characters, got {shown!r}"[:200])
    return value


def validate_event(
    raw: bytes | str,
    *,
    now: datetime,
    max_future_skew: timedelta,
    meters: Mapping[str, Any] | frozenset[str] | set[str],
) -> AcceptedEvent | Rejection:
    """Validate one raw payload. ``now`` is injected (aware UTC); ``meters`` are the declared names."""
    try:
        return _validate(raw, now, max_future_skew, meters)
    except RejectError as r:
        return Rejection(r.reason, r.message)


def _validate(
    raw: bytes | str, now: datetime, skew: timedelta, meters: Mapping[str, Any] | frozenset[str] | set[str]
) -> AcceptedEvent:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise RejectError(
            Reason.PAYLOAD_TOO_LARGE, f"payload has {len(raw)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RejectError(Reason.INVALID_ENCODING, f"payload is not UTF-8: {e}") from None
    else:
        text = raw
    # (decoded bytes never hold a surrogate; a str from a Python caller may)
    fast = FAST_EVENT_RE.fullmatch(text) if isinstance(raw, bytes) or not UNSTORABLE_RE.search(text) else None
    accepted = _fast_path(fast, now, skew, meters) if fast is not None else None
    if accepted is None:
        accepted = _validate_document(text, now, skew, meters)
    _check_output_size(raw, text, accepted)
    return accepted


def dead_letter_payload(raw: bytes) -> tuple[str | None, str | None]:
    """A rejected payload as its dead letter holds it: (base64, text), one of them None. The text
    when it is UTF-8 and fits the record JSON-escaped (every payload the contract could accept
    does); else the bytes in base64, only the first DLQ_PAYLOAD_KEEP_BYTES (then truncated: the
    dead letter's size and SHA-256 identify the original)."""
    if dead_letter_keeps_text(raw):
        return None, raw.decode("utf-8")
    return base64.b64encode(raw[:DLQ_PAYLOAD_KEEP_BYTES]).decode("ascii"), None


def dead_letter_keeps_text(raw: bytes) -> bool:
    """Does the dead letter of ``raw`` keep its full text? It does for every payload the contract
    could accept (_check_output_size), so reconcile can attribute the others, on both sides, by
    their record timestamp."""
    if len(raw) + OUTPUT_RECORD_OVERHEAD_BYTES > MAX_OUTPUT_RECORD_BYTES:
        return False  # too long even unescaped
    if raw.startswith(b"\xef\xbb\xbf"):
        return False  # a leading BOM does not survive PyFlink's string conversion: keep the bytes
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    # escaping makes a text at most 6 times longer (\u0001)
    return (6 * len(raw) + OUTPUT_RECORD_OVERHEAD_BYTES <= MAX_OUTPUT_RECORD_BYTES
            or _escaped_bytes(text) + OUTPUT_RECORD_OVERHEAD_BYTES <= MAX_OUTPUT_RECORD_BYTES)


def properties_json(properties: dict[str, Any] | None) -> str | None:
    """The properties as the metering job carries them to the ledger: compact JSON text (decimals
    as strings, non-ASCII kept)."""
    if properties is None:
        return None
    return json.dumps(properties, separators=(",", ":"), ensure_ascii=False, default=str)


def _escaped_bytes(text: str) -> int:
    """Bytes of ``text`` as a JSON string value in UTF-8 (what the job's JSON sinks write)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def _check_output_size(raw: bytes | str, text: str, ev: AcceptedEvent) -> None:
    """EVENT_TOO_LARGE when the biggest record the job writes for this event — its late record,
    holding the payload text and the properties text, each JSON-escaped — would exceed
    MAX_OUTPUT_RECORD_BYTES. Escaping at most doubles a text, and the properties text is at most
    twice its source, so payloads under (limit - overhead) / 6 fit without being measured."""
    size = len(raw) if not isinstance(raw, str) else len(text.encode("utf-8", "surrogatepass"))
    if 6 * size + OUTPUT_RECORD_OVERHEAD_BYTES <= MAX_OUTPUT_RECORD_BYTES:
        return
    props = properties_json(ev.properties)
    record = _escaped_bytes(text) + (_escaped_bytes(props) if props is not None else 0) + OUTPUT_RECORD_OVERHEAD_BYTES
    if record > MAX_OUTPUT_RECORD_BYTES:
        raise RejectError(
            Reason.EVENT_TOO_LARGE,
            f"the event's output record would have {record} bytes (payload and properties, JSON-escaped), "
            f"the limit is {MAX_OUTPUT_RECORD_BYTES}",
        )


def _unstorable(doc: dict[str, Any]) -> str | None:
    """The path of the first string (key or value, at any depth) holding a character Postgres
    cannot store, or None."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            if UNSTORABLE_RE.search(v):
                return path or "a value"
        elif isinstance(v, dict):
            for k, x in v.items():
                if UNSTORABLE_RE.search(k):
                    return f"a key in {path or 'the event'}"
                stack.append((f"{path}.{k}" if path else k, x))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
    return None


def _fast_path(
    m: re.Match[str], now: datetime, skew: timedelta, meters: Mapping[str, Any] | frozenset[str] | set[str]
) -> AcceptedEvent | None:
    """The accepted event of a payload FAST_EVENT_RE matched, or None when in any doubt."""
    event_id, y, mo, d, h, mi, sec, frac, customer_id, meter, qtext, ptext = m.groups()
    if meter not in meters:
        return None
    try:
        event_time = datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec),
                              int((frac or "").ljust(6, "0")[:6]), tzinfo=UTC)
    except ValueError:
        return None
    if event_time < MIN_EVENT_TIME or event_time > now + skew:
        return None
    if qtext is None:
        quantity = Decimal(1)
    else:
        quantity = Decimal(qtext)
        if not quantity:
            quantity = Decimal(0)  # 0.00 -> 0, as the full validator does
    properties = None
    if ptext is not None:
        if "\\u" in ptext:
            return None  # an escape may hide a character Postgres cannot store: the full validator's
        try:
            properties = _decoder.decode(ptext)
        except (RejectError, ValueError, RecursionError):
            return None
        if not isinstance(properties, dict):
            return None
    return AcceptedEvent(event_id, event_time, customer_id, meter, quantity, properties)


def _validate_document(
    text: str, now: datetime, skew: timedelta, meters: Mapping[str, Any] | frozenset[str] | set[str]
) -> AcceptedEvent:
    """The full validator over any JSON text (after the size and encoding checks)."""
    try:
        doc = _decoder.decode(text)
    except RejectError:
        raise
    except (ValueError, RecursionError) as e:
        raise RejectError(Reason.INVALID_JSON, f"payload is not JSON: {e}"[:300]) from None
    if not isinstance(doc, dict):
        raise RejectError(Reason.NOT_AN_OBJECT, f"payload is a JSON {type(doc).__name__}, not an object")
    extra = doc.keys() - ALLOWED_FIELDS
    if extra:
        raise RejectError(Reason.UNKNOWN_FIELD, f"unknown field(s): {', '.join(sorted(extra))[:200]}")
    for f in REQUIRED_FIELDS:
        if doc.get(f) is None:
            raise RejectError(Reason.MISSING_FIELD, f"{f} is missing")
    # NUL and lone surrogates reach a decoded document only through \u escapes (or a str input)
    if "\\u" in text or not text.isascii():
        where = _unstorable(doc)
        if where is not None:
            raise RejectError(
                Reason.INVALID_CHARACTER,
                f"{where[:100]} holds a NUL character or a lone UTF-16 surrogate (not storable)",
            )
    event_id = _check_id(doc["event_id"], "event_id", Reason.INVALID_EVENT_ID)
    customer_id = _check_id(doc["customer_id"], "customer_id", Reason.INVALID_CUSTOMER_ID)
    meter = doc["meter"]
    if not isinstance(meter, str) or not METER_RE.fullmatch(meter):
        raise RejectError(Reason.INVALID_METER, f"meter {str(meter)[:80]!r} must match {METER_PATTERN}")
    if meter not in meters:
        raise RejectError(Reason.UNKNOWN_METER, f"meter {meter!r} is not declared in the configuration")
    event_time = parse_event_time(doc["event_time"])
    if event_time > now + skew:
        raise RejectError(
            Reason.FUTURE_EVENT_TIME,
            f"event_time {event_time.isoformat()} is more than {skew} ahead of now ({now.isoformat()})",
        )
    quantity = parse_quantity(doc["quantity"]) if "quantity" in doc else Decimal(1)
    properties = doc.get("properties")
    if "properties" in doc and properties is not None and not isinstance(properties, dict):
        raise RejectError(Reason.INVALID_PROPERTIES, "properties must be a JSON object")
    return AcceptedEvent(event_id, event_time, customer_id, meter, quantity, properties)


def event_json_schema() -> dict[str, Any]:
    schema = UsageEvent.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://meterflow.dev/schemas/usage_event.schema.json"
    # The contract accepts quantity as a decimal string too.
    q = schema["properties"]["quantity"]
    q.pop("anyOf", None)
    q["oneOf"] = [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\+?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"},
    ]
    q.pop("type", None)
    q.pop("minimum", None)
    return schema


def event_to_json(ev: AcceptedEvent) -> str:
    """Canonical JSON of an accepted event (quantity as a decimal string)."""
    return json.dumps(
        {
            "event_id": ev.event_id,
            "event_time": ev.event_time.isoformat().replace("+00:00", "Z"),
            "customer_id": ev.customer_id,
            "meter": ev.meter,
            "quantity": str(ev.quantity),
            "properties": ev.properties,
        },
        separators=(",", ":"),
        default=str,
    )


__all__ = [
    "AcceptedEvent",
    "Rejection",
    "Reason",
    "UsageEvent",
    "validate_event",
    "event_json_schema",
    "event_to_json",
    "parse_event_time",
    "parse_quantity",
]
