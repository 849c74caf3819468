"""The rated charge: one row of ``billing.rated_charges``, and its deterministic id."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from pricing.money import dstr
from pricing.periods import to_epoch_ms

Cause = Literal["window_fired", "late_revision", "late_event", "rerate"]
CAUSES: frozenset[str] = frozenset({"window_fired", "late_revision", "late_event", "rerate"})

#: Namespace of charge ids (a fixed constant: never change it, ids would change on replay).
CHARGE_ID_NAMESPACE = uuid.UUID("5b0c7a1e-3f43-5d0e-9a51-6d657465726d")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _key_prefix(customer_id: str, meter: str, period_start: datetime) -> str:
    return (
        "[" + json.dumps(customer_id, ensure_ascii=False) + "," + json.dumps(meter, ensure_ascii=False)
        + "," + str(to_epoch_ms(period_start)) + ","
    )


def charge_id(
    customer_id: str,
    meter: str,
    period_start: datetime,
    window_start: datetime,
    cause: str,
    revision: int,
) -> uuid.UUID:
    """Deterministic charge id: uuid5 over (customer, meter, period_start, window_start, cause,
    revision). Instants enter as epoch milliseconds (UTC), the whole as a compact JSON array
    (``["acme","api_calls",1767225600000,1767229200000,"window_fired",0]``), so no separator
    inside a customer id can make two keys collide."""
    if cause not in CAUSES:
        raise ValueError(f"cause must be one of {', '.join(sorted(CAUSES))}, got {cause!r}")
    name = _key_prefix(customer_id, meter, period_start) + (
        f'{to_epoch_ms(window_start)},"{cause}",{int(revision)}]'
    )
    return uuid.uuid5(CHARGE_ID_NAMESPACE, name)


class ChargeIdFactory:
    """``charge_id`` for one (customer, meter, period), with the shared prefix hashed once."""

    __slots__ = ("_h",)

    def __init__(self, customer_id: str, meter: str, period_start: datetime) -> None:
        self._h = hashlib.sha1(  # uuid5 is defined on SHA-1
            CHARGE_ID_NAMESPACE.bytes + _key_prefix(customer_id, meter, period_start).encode("utf-8"),
            usedforsecurity=False,
        )

    def __call__(self, window_start: datetime, cause: str, revision: int) -> uuid.UUID:
        # window_start must be aware UTC; cause one of CAUSES (the rater checks both)
        h = self._h.copy()
        h.update(f'{(window_start - _EPOCH) // _MS},"{cause}",{revision}]'.encode())
        # == uuid.UUID(bytes=digest[:16], version=5), without UUID.__init__'s argument checks
        u = object.__new__(uuid.UUID)
        _set(u, "int", (int.from_bytes(h.digest()[:16]) & _V5_MASK) | _V5_BITS)
        _set(u, "is_safe", uuid.SafeUUID.unknown)
        return u


_set = object.__setattr__
# RFC 4122 variant (10xx in clock_seq_hi) and version 5 (0101 in time_hi), as uuid.UUID sets them
_V5_MASK = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_V5_BITS = (0x8000 << 48) | (5 << 76)


class Charge:
    """A charge delta. ``amount`` is unrounded (all fractional digits kept; may be negative).

    ``calculation`` (the explanation, JSON-ready: decimals as strings) is built on first access
    from an immutable snapshot taken when the charge was rated, so rating stays fast while the
    explanation is complete.
    """

    __slots__ = (
        "charge_id",
        "customer_id",
        "meter",
        "period_start",
        "window_start",
        "window_end",
        "currency",
        "quantity_delta",
        "amount",
        "price_book_id",
        "price_version",
        "cause",
        "revision",
        "_calc",
        "_build",
    )

    def __init__(
        self,
        charge_id: uuid.UUID,
        customer_id: str,
        meter: str,
        period_start: datetime,
        window_start: datetime,
        window_end: datetime,
        currency: str,
        quantity_delta: Decimal,
        amount: Decimal,
        price_book_id: str,
        price_version: str,
        cause: str,
        revision: int,
        calculation: dict[str, Any] | None = None,
        build_calculation: Callable[..., dict[str, Any]] | None = None,
        build_args: tuple[Any, ...] = (),
    ) -> None:
        self.charge_id = charge_id
        self.customer_id = customer_id
        self.meter = meter
        self.period_start = period_start
        self.window_start = window_start
        self.window_end = window_end
        self.currency = currency
        self.quantity_delta = quantity_delta
        self.amount = amount
        self.price_book_id = price_book_id
        self.price_version = price_version
        self.cause = cause
        self.revision = revision
        self._calc = calculation
        self._build = (build_calculation, build_args) if build_calculation is not None else None

    @property
    def calculation(self) -> dict[str, Any]:
        if self._calc is None:
            assert self._build is not None
            fn, args = self._build
            self._calc = fn(*args)
            self._build = None
        return self._calc

    def to_row(self) -> dict[str, Any]:
        """Column values of ``billing.rated_charges`` (Python types; ``calculation`` a dict)."""
        return {
            "charge_id": self.charge_id,
            "customer_id": self.customer_id,
            "meter": self.meter,
            "period_start": self.period_start,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "currency": self.currency,
            "quantity_delta": self.quantity_delta,
            "amount": self.amount,
            "price_book_id": self.price_book_id,
            "price_version": self.price_version,
            "calculation": self.calculation,
            "cause": self.cause,
            "revision": self.revision,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (decimals as strings, instants RFC 3339)."""
        from pricing.periods import isoformat_utc

        row = self.to_row()
        for k in ("period_start", "window_start", "window_end"):
            row[k] = isoformat_utc(row[k])
        row["charge_id"] = str(row["charge_id"])
        row["quantity_delta"] = dstr(self.quantity_delta)
        row["amount"] = dstr(self.amount)
        return row

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Charge):
            return NotImplemented
        return self.to_row() == other.to_row()

    __hash__ = None  # type: ignore[assignment]  # equal by value and not frozen: unhashable

    def __repr__(self) -> str:
        return (
            f"Charge(charge_id={self.charge_id}, customer_id={self.customer_id!r}, "
            f"meter={self.meter!r}, window_start={self.window_start.isoformat()}, "
            f"quantity_delta={self.quantity_delta}, amount={self.amount}, "
            f"price_version={self.price_version!r}, cause={self.cause!r}, revision={self.revision})"
        )
