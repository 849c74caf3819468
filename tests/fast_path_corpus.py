"""Payloads at the edges of the JVM fast path (schemas.event.jvm_fast_event_pattern), shared by the
unit test (the pattern, in Python) and the pipeline test (the same pattern and the field cuts, in
Flink SQL). Each case says whether the fast path must claim it; whatever it claims must be a
payload the contract accepts, with the same fields."""

from __future__ import annotations

import json
import random

METERS = ("api_calls", "storage_gb_hours", "gpu.seconds")


def compact(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def base(**over: object) -> dict:
    d: dict = {"event_id": "e-1", "event_time": "2026-11-23T10:00:00.250Z", "customer_id": "c-1",
               "meter": "api_calls", "quantity": 5, "properties": {"synthetic": True}}
    d.update(over)
    return {k: v for k, v in d.items() if v is not _DROP}


_DROP = object()


def raw(text: str) -> bytes:
    return text.encode()


# (payload, claimed by the fast path?) — one comment per boundary
CASES: list[tuple[bytes, bool]] = [
    # the producer's compact layout (jobs.tools.synthetic): claimed
    (compact(**base()), True),
    # no quantity (default 1), no properties
    (compact(**base(quantity=_DROP, properties=_DROP)), True),
    # quantity without properties, properties without quantity
    (compact(**base(properties=_DROP)), True),
    (compact(**base(quantity=_DROP)), True),
    # a time without fraction
    (compact(**base(event_time="2026-11-23T10:00:00Z")), True),
    # the first instant the contract allows, and the last second of a leap year's day 365
    (compact(**base(event_time="1970-01-01T00:00:00.000Z")), True),
    (compact(**base(event_time="2024-12-31T23:59:59.999Z")), True),
    # 31 in a 31-day month, 30 in a 30-day month: claimed; 31 April, 30 February: the validator's
    (compact(**base(event_time="2026-10-31T12:00:00Z")), True),
    (compact(**base(event_time="2026-04-30T12:00:00Z")), True),
    (compact(**base(event_time="2026-04-31T12:00:00Z")), False),
    (compact(**base(event_time="2026-02-30T12:00:00Z")), False),
    # 29 February always goes to the validator (leap years are its business)
    (compact(**base(event_time="2024-02-29T12:00:00Z")), False),
    (compact(**base(event_time="2026-02-29T12:00:00Z")), False),
    # hour 24, minute 60, second 60 (a leap second): not claimed
    (compact(**base(event_time="2026-11-23T24:00:00Z")), False),
    (compact(**base(event_time="2026-11-23T10:60:00Z")), False),
    (compact(**base(event_time="2026-11-23T10:00:60Z")), False),
    # before 1970, month 13, day 00: not claimed
    (compact(**base(event_time="1969-12-31T23:59:59.999Z")), False),
    (compact(**base(event_time="2026-13-01T00:00:00Z")), False),
    (compact(**base(event_time="2026-11-00T00:00:00Z")), False),
    # other fractions, offsets, lower-case t/z: valid, but the validator's
    (compact(**base(event_time="2026-11-23T10:00:00.25Z")), False),
    (compact(**base(event_time="2026-11-23T10:00:00.250000Z")), False),
    (compact(**base(event_time="2026-11-23T10:00:00+01:00")), False),
    (compact(**base(event_time="2026-11-23t10:00:00z")), False),
    # no offset: invalid
    (compact(**base(event_time="2026-11-23T10:00:00")), False),
    # quantities: canonical decimal text is claimed
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":2.50}'), True),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":0}'), True),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":0.5}'), True),
    # 0.000001 prints as itself, 0.0000001 as 1E-7 in Python: only the first is claimed
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":0.000001}'), True),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":0.0000001}'), False),
    # 0.000 is 0 to the validator: not claimed (its text would differ)
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":0.000}'), False),
    # 12 integer and 12 fractional digits: the contract's largest quantity (< 10^12); 13 do not
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":'
         + "9" * 12 + "." + "9" * 12 + "}"), True),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":'
         + "1" + "0" * 12 + "}"), False),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":'
         + "6" + "0" * 25 + "}"), False),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":1.'
         + "1" * 13 + "}"), False),
    # exponent, negative, leading zero, string quantities: the validator's
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":1e3}'), False),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":-1}'), False),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":01}'), False),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","quantity":"5"}'), False),
    # ids: 1 and 128 characters claimed; 129 or empty not; a space is fine
    (compact(**base(event_id="x")), True),
    (compact(**base(event_id="x" * 128)), True),
    (compact(**base(event_id="x" * 129)), False),
    (compact(**base(event_id="")), False),
    (compact(**base(customer_id="acme corp")), True),
    (compact(**base(customer_id="c" * 129)), False),
    # escapes, non-ASCII, control characters: the validator's (which rejects NUL and lone surrogates)
    (raw('{"event_id":"a\\u0000","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls"}'), False),
    (raw('{"event_id":"p2-surr\\ud800","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls"}'), False),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls",'
         '"properties":{"a":"x\\u0000"}}'), False),
    # 12 digits of a fraction of a second: valid RFC 3339, the validator's
    (compact(**base(event_time="2026-11-23T10:00:00.123456789012Z")), False),
    (raw('{"event_id":"a\\"b","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls"}'), False),
    (raw('{"event_id":"a\\u0041","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls"}'), False),
    (compact(**base(customer_id="kunde-ä")), False),
    (compact(**base(customer_id="tab\there")), False),
    # meters: declared only, literally (a dot is not a wildcard)
    (compact(**base(meter="gpu.seconds")), True),
    (compact(**base(meter="gpuxseconds")), False),
    (compact(**base(meter="not_declared")), False),
    (compact(**base(meter="API_CALLS")), False),
    # properties: flat objects of plain scalars are claimed, {} too
    (compact(**base(properties={})), True),
    (compact(**base(properties={"a": "x", "b": 1, "c": True, "d": None, "e": False, "f": -12, "g": 0})), True),
    (compact(**base(properties={"quantity": "x", "properties": "y"})), True),
    # a key twice (anywhere), a nested object, a float, -0, an escape: the validator's
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"a":1,"b":2,"a":3}}'), False),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"ab":1,"a":2}}'), True),
    (compact(**base(properties={"a": {"b": 1}})), False),
    (compact(**base(properties={"a": 1.5})), False),
    (raw('{"event_id":"e","event_time":"2026-11-23T10:00:00Z","customer_id":"c","meter":"api_calls","properties":{"a":-0}}'), False),
    (compact(**base(properties={"a": "x\"y"})), False),
    (compact(**base(properties=None)), False),
    (compact(**base(properties=[1])), False),
    # 64 properties claimed, 65 not
    (compact(**base(properties={f"k{i}": i for i in range(64)})), True),
    (compact(**base(properties={f"k{i}": i for i in range(65)})), False),
    # layout: another order, whitespace, an unknown field, a trailing line break, two documents
    (json.dumps(base(), separators=(",", ":"), sort_keys=True).encode(), False),
    (json.dumps(base()).encode(), False),
    (compact(**base(extra=1)), False),
    (compact(**base()) + b"\n", False),
    (compact(**base()) + compact(**base()), False),
    # not JSON, not UTF-8, empty
    (b"not json", False),
    (compact(**base())[:-1], False),
    (b"\xff" + compact(**base()), False),
    (b"", False),
]


def random_payloads(n: int, seed: int = 7) -> list[bytes]:
    """Payloads near the fast path's edges, deterministic: mostly the compact layout with one or
    two fields drawn from a pool of valid, odd and invalid values."""
    rnd = random.Random(seed)
    times = ["2026-11-23T10:00:00.250Z", "2026-11-23T10:00:00Z", "2024-02-29T00:00:00Z", "2026-02-28T23:59:59.999Z",
             "2026-06-31T00:00:00Z", "1970-01-01T00:00:00.000Z", "1969-12-31T23:59:59Z", "2026-11-23T10:00:00.5Z",
             "2026-11-23T10:00:00+00:00", "2026-11-23 10:00:00Z", "2999-12-31T23:59:59.999Z", "2026-11-23T23:59:60Z"]
    quantities: list[object] = [0, 1, 7, 10**11, 10**12, 10**25, 10**26, "2.5", "0.5", "0.000001", "0.0000001", "0.00", "1.000000000000",
                                "1.0000000000000", "-3", "1e2", "3.14159", _DROP]
    ids = ["e", "x" * 128, "x" * 129, "", "a b", "a\"b", "ä", "a\\b", "{}", "properties", "quantity", ",", ":"]
    props: list[object] = [_DROP, {}, {"a": 1}, {"a": "b", "c": None}, {"n": -5, "t": True}, {"x": 1.5}, {"y": {"z": 1}},
                           {"k": "v" * 1024}, {"k": "v" * 1025}, None, "s"]
    out = []
    for i in range(n):
        d = base(event_id=f"r-{i}", event_time=rnd.choice(times), quantity=rnd.choice(quantities),
                 properties=rnd.choice(props), meter=rnd.choice([*METERS, "nope"]))
        if rnd.random() < 0.3:
            d[rnd.choice(["event_id", "customer_id"])] = rnd.choice(ids)
        q = d.get("quantity")
        if isinstance(q, str) and rnd.random() < 0.7:
            text = compact(**{k: v for k, v in d.items() if k != "quantity"}).decode()
            # a JSON number with exactly this text (json.dumps cannot write 2.50)
            head, sep, tail = text.partition(',"properties":')
            if not sep:
                head, tail = text[:-1], ""
                out.append(f'{head},"quantity":{q}}}'.encode())
            else:
                out.append(f'{head},"quantity":{q},"properties":{tail}'.encode())
            continue
        out.append(compact(**d))
    return out
