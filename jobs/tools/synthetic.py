"""Reproducible synthetic usage events for demos, tests and benchmarks.

Every knob is explicit and the generator is a pure function of them (and the seed), so a run can be
repeated exactly. Each produced record says what it is (``kind``) so tests can count expectations:
``valid`` (on time or slightly out of order), ``days_late`` (event_time days behind the stream),
``duplicate`` (same event_id and payload as an earlier event) and ``invalid`` (breaks one rule).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

INVALID_KINDS: tuple[tuple[str, str], ...] = (
    # (expected reason code, how the payload is broken)
    ("invalid_json", "truncated"),
    ("missing_field", "no_event_id"),
    ("negative_quantity", "negative"),
    ("unknown_meter", "unknown_meter"),
    ("invalid_event_time", "no_offset"),
    ("invalid_quantity", "quantity_string"),
    ("not_an_object", "array"),
)


@dataclass(frozen=True, slots=True)
class SyntheticRecord:
    key: bytes
    value: bytes
    timestamp_ms: int
    kind: str  # valid | days_late | duplicate | invalid
    expected_reason: str | None = None


@dataclass(frozen=True)
class SyntheticSpec:
    count: int
    seed: int = 42
    customers: int = 100
    meters: Sequence[str] = ("api_calls",)
    start: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    span: timedelta = timedelta(days=1)
    out_of_order_share: float = 0.05  # swapped with a neighbour up to max_disorder behind
    max_disorder: timedelta = timedelta(seconds=3)
    days_late_share: float = 0.0  # event_time 1-3 days behind the stream position
    duplicate_share: float = 0.0
    invalid_share: float = 0.0
    max_quantity: int = 10
    id_prefix: str = "evt"

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        for name in ("out_of_order_share", "days_late_share", "duplicate_share", "invalid_share"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.days_late_share + self.duplicate_share + self.invalid_share > 1:
            raise ValueError("days_late + duplicate + invalid shares must not exceed 1")


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _payload(event_id: str, t: datetime, customer: str, meter: str, q: Decimal | int) -> dict:
    return {
        "event_id": event_id,
        "event_time": _iso(t),
        "customer_id": customer,
        "meter": meter,
        "quantity": q,
        "properties": {"synthetic": True},
    }


def _encode(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()


def _broken(kind: str, doc: dict) -> bytes:
    d = dict(doc)
    if kind == "truncated":
        return _encode(d)[:-7]
    if kind == "no_event_id":
        d.pop("event_id")
    elif kind == "negative":
        d["quantity"] = -abs(int(d["quantity"]) or 1)
    elif kind == "unknown_meter":
        d["meter"] = "not_declared_meter"
    elif kind == "no_offset":
        d["event_time"] = d["event_time"].rstrip("Z")
    elif kind == "quantity_string":
        d["quantity"] = "twelve"
    elif kind == "array":
        return _encode([d])
    return _encode(d)


def generate(spec: SyntheticSpec) -> Iterator[SyntheticRecord]:
    rnd = random.Random(spec.seed)
    step = spec.span / max(spec.count, 1)
    emitted: list[tuple[bytes, bytes, int]] = []  # for duplicates (bounded sample)
    pending_swap: SyntheticRecord | None = None
    for i in range(spec.count):
        t = spec.start + step * i
        customer = f"cust-{rnd.randrange(spec.customers):05d}"
        meter = spec.meters[rnd.randrange(len(spec.meters))]
        q = rnd.randint(1, spec.max_quantity)
        r = rnd.random()
        if r < spec.duplicate_share and emitted:
            key, value, ts = emitted[rnd.randrange(len(emitted))]
            yield SyntheticRecord(key, value, ts, "duplicate")
            continue
        r -= spec.duplicate_share
        event_id = f"{spec.id_prefix}-{spec.seed}-{i:09d}"
        if r < spec.invalid_share:
            reason, how = INVALID_KINDS[rnd.randrange(len(INVALID_KINDS))]
            value = _broken(how, _payload(event_id, t, customer, meter, q))
            yield SyntheticRecord(customer.encode(), value, _ms(t), "invalid", reason)
            continue
        r -= spec.invalid_share
        kind = "valid"
        if r < spec.days_late_share:
            t = t - timedelta(days=rnd.randint(1, 3), minutes=rnd.randint(0, 59))
            kind = "days_late"
        elif rnd.random() < spec.out_of_order_share:
            t = t - spec.max_disorder * rnd.random()
        value = _encode(_payload(event_id, t, customer, meter, q))
        rec = SyntheticRecord(customer.encode(), value, _ms(t), kind)
        if len(emitted) < 10_000:
            emitted.append((rec.key, rec.value, rec.timestamp_ms))
        elif rnd.random() < 0.01:
            emitted[rnd.randrange(len(emitted))] = (rec.key, rec.value, rec.timestamp_ms)
        if pending_swap is None and kind == "valid" and rnd.random() < spec.out_of_order_share / 2:
            pending_swap = rec  # emit after the next one: a local reordering
            continue
        yield rec
        if pending_swap is not None:
            yield pending_swap
            pending_swap = None
    if pending_swap is not None:
        yield pending_swap


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)
