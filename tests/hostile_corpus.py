"""Hostile payloads, generated from a seed (issue 14): what a careless or hostile producer sends.

Each payload starts from a valid event in the producers' compact layout and breaks one or two
things: its structure (fields dropped, added, reordered, repeated, nested deep, truncated), its
encoding (invalid UTF-8, escaped NUL, lone and paired surrogates, control characters), its size
(properties up to and over 1 MB), its numbers (huge and tiny exponents, 10^12, -0, strings), its
times (fractions of 0-15 digits, offsets, impossible dates), its ids (empty, 128/129 characters,
quotes, non-ASCII) and its properties (nested, many keys, duplicate keys). Shared by the unit fuzz
(the contract validator against the JVM fast path's pattern), the pipeline fuzz (the real job on
Flink) and the integration test.
"""

from __future__ import annotations

import json
import random

METERS = ("api_calls", "storage_gb_hours", "gpu.seconds")
MB = 1_000_000


def _base(rnd: random.Random, i: int) -> dict:
    d: dict = {"event_id": f"h-{i}", "event_time": "2026-11-23T10:00:00.250Z",
               "customer_id": f"c-{rnd.randrange(20)}", "meter": rnd.choice(METERS)}
    if rnd.random() < 0.8:
        d["quantity"] = rnd.choice([1, 5, 0, "2.5", 12])
    if rnd.random() < 0.6:
        d["properties"] = {"region": "eu", "n": rnd.randrange(100)}
    return d


def _dump(d: object) -> str:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


def _splice(text: str, field: str, value_text: str) -> str:
    """Replace the JSON value of a top-level ``field`` (present in the compact dump) by raw text."""
    doc = json.loads(text)
    key = f'"{field}":'
    start = text.index(key) + len(key)
    return text[:start] + value_text + text[start + len(_dump(doc[field])):]


_ODD_STRINGS = ["", "x" * 128, "x" * 129, "a b", 'a"b', "ä", "a\\b", "\t", "\x00", "a\x00", "\x7f", "\u2028",
                "\U0001F600", "=SUM(1)", "' OR 1=1 --", "p2-surr?", "ｆｕｌｌ"]
_ODD_ESCAPED = ["\\u0000", "\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ud83d", "x\\u0000y", "\\u0041", "\\/", "\\n",
                "\\uD800\\uD800", "\\u00e4"]
_QUANTITIES = ["0", "1", "-0", "0.000", "0e-999999999", "1e-999999999", "1e-99999999999999999999", "1e400",
               "6e25", "999999999999.999999999999", "1000000000000", "999999999999", "1e11", "1E12",
               "0.0000000000001", "0.000000000001", "1.5000000000000", '"12.5"', '"1e3"', '" 1"', '"NaN"',
               '"Infinity"', "-1", '"-0.5"', "true", "null", "[1]", '{"v":1}', "01", "1.", ".5", "1e",
               "9" * 5000, "1" + "0" * 40, '"' + "9" * 100 + '"', "2.50", "0.5", "0.000001", "0.0000001"]
_TIMES = ["2026-11-23T10:00:00Z", "2026-11-23T10:00:00.1Z", "2026-11-23T10:00:00.123456Z",
          "2026-11-23T10:00:00.123456789Z", "2026-11-23T10:00:00.123456789012Z",
          "2026-11-23T10:00:00." + "9" * 15 + "Z", "2026-11-23T10:00:00.999999999999+01:00",
          "2026-11-23t10:00:00z", "2026-11-23T10:00:00+14:00", "2026-11-23T10:00:00-23:59", "2026-11-23T10:00:00+24:00",
          "2024-02-29T12:00:00Z", "2026-02-29T12:00:00Z", "2026-04-31T00:00:00Z", "2026-11-23T24:00:00Z",
          "2026-11-23T23:59:60Z", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z",
          "2999-12-31T23:59:59Z", "2026-11-23T10:00:00", "2026-11-23 10:00:00Z", "2026-11-23", "", "1763892000000",
          "2026-11-23T10:00:00.Z", "２０２６-11-23T10:00:00Z"]


def hostile_payload(rnd: random.Random, i: int, *, big: bool = True) -> bytes:
    """One hostile payload (deterministic for a given ``rnd`` state)."""
    d = _base(rnd, i)
    kind = rnd.randrange(12)
    if kind == 0:  # structure
        op = rnd.randrange(9)
        if op == 0:
            d.pop(rnd.choice(["event_id", "event_time", "customer_id", "meter"]))
        elif op == 1:
            d[rnd.choice(["qty", "Event_id", "extra", ""])] = 1
        elif op == 2:
            d = dict(sorted(d.items(), reverse=True))
        elif op == 3:
            text = _dump(d)
            return (text[:-1] + ',"event_id":"dup"}').encode()
        elif op == 4:
            depth = rnd.choice([10, 1000, 100_000])
            inner = "[" * depth + "]" * depth
            return (_dump(d)[:-1] + ',"properties":{"deep":' + inner + "}}").encode()
        elif op == 5:
            depth = rnd.choice([1000, 50_000])
            return ("[" * depth + "]" * depth).encode()
        elif op == 6:
            text = _dump(d)
            return text[: rnd.randrange(len(text))].encode()
        elif op == 7:
            return rnd.choice([b"", b"null", b"[]", b'"x"', b"42", b"{}", b"\xef\xbb\xbf" + _dump(d).encode(),
                               _dump(d).encode() + _dump(d).encode(), json.dumps(d, indent=1).encode()])
        else:
            return (" " * rnd.randrange(1, 50) + _dump(d) + "\t").encode()
    elif kind == 1:  # encoding: bytes that are not UTF-8, or raw control characters
        raw = bytearray(_dump(d).encode())
        pos = raw.index(b'"event_id":"') + 12
        raw[pos:pos] = rnd.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\x01",
                                   b"\xe2\x82", b"\x80"])
        return bytes(raw)
    elif kind == 2:  # escapes in a string field (NUL, surrogates, pairs)
        field = rnd.choice(["event_id", "customer_id", "meter", "event_time"])
        return _splice(_dump(d), field, '"' + "".join(rnd.choices(_ODD_ESCAPED, k=rnd.randrange(1, 3))) + '"').encode()
    elif kind == 3:  # escapes in properties
        d["properties"] = {"k": "v"}
        esc = rnd.choice(_ODD_ESCAPED)
        text = _dump(d)
        if rnd.random() < 0.5:
            return text.replace('"k":"v"', f'"k":"{esc}"').encode()
        return text.replace('"k":"v"', f'"{esc}":"v"').encode()
    elif kind == 4:  # ids
        d[rnd.choice(["event_id", "customer_id"])] = rnd.choice(_ODD_STRINGS + [7, None, True, ["x"]])
        return _dump(d).encode("utf-8", "surrogatepass")
    elif kind == 5:  # numbers
        if "quantity" not in d:
            d["quantity"] = 1
        return _splice(_dump(d), "quantity", rnd.choice(_QUANTITIES)).encode()
    elif kind == 6:  # times
        d["event_time"] = rnd.choice(_TIMES)
        return _dump(d).encode()
    elif kind == 7:  # properties: shapes
        d["properties"] = rnd.choice([
            {"a": {"b": {"c": 1}}}, {"a": [1, 2, {"x": None}]}, {"x": 1.5}, {"x": -0.0}, {"x": 1e300}, [],
            "s", None, 7, {f"k{j}": j for j in range(rnd.choice([63, 64, 65, 200]))}, {"": ""},
            {"k" * 128: "v" * 1024}, {"k" * 129: "v"}, {"k": "v" * 1025}, {"quantity": -1, "properties": {}},
        ])
        return _dump(d).encode()
    elif kind == 8:  # properties: the same key twice, at the top of the object or deep inside
        d["properties"] = {"a": 1, "b": 2}
        text = _dump(d)
        return text.replace('"b":2', rnd.choice(['"a":3', '"b":2,"b":3', '"b":{"c":1,"c":2}'])).encode()
    elif kind == 9 and big:  # sizes: up to and over 1 MB
        target = (rnd.choice([170_000, 500_000, 700_000, 999_000, MB, MB + 1, 1_040_000]) if rnd.random() < 0.08
                  else rnd.choice([300, 5_000, 40_000, 80_000, 120_000]))
        shape = rnd.randrange(4)
        text = _dump(d)
        if shape == 0:  # one long plain value
            filler = '"big":"' + "v" * target + '"'
        elif shape == 1:  # a value that doubles when escaped
            filler = '"big":"' + '\\"' * (target // 2) + '"'
        elif shape == 2:  # many small keys (the fast path's old quadratic case)
            n = target // 12
            filler = ",".join(f'"k{j:07d}":1' for j in range(n))
        else:  # whitespace padding outside the strings
            return (text[:-1] + " " * target + "}").encode()[: target + len(text)]
        if "properties" in d:
            out = _splice(text, "properties", "{" + filler + "}")
        else:
            out = text[:-1] + ',"properties":{' + filler + "}}"
        raw = out.encode()
        return raw[:target] if rnd.random() < 0.2 else raw  # some are cut: invalid JSON, still that big
    elif kind == 10:  # meters
        d["meter"] = rnd.choice(["API_CALLS", "nope", "gpu_seconds", "gpuxseconds", "m" * 65, "", 7, "api calls"])
        return _dump(d).encode()
    # a valid event, possibly a duplicate id of an earlier one
    if rnd.random() < 0.2:
        d["event_id"] = f"h-{rnd.randrange(max(i, 1))}"
    return _dump(d).encode()


def hostile_payloads(n: int, seed: int, *, big: bool = True) -> list[bytes]:
    rnd = random.Random(seed)
    return [hostile_payload(rnd, i, big=big) for i in range(n)]
