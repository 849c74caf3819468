"""Price books: pydantic models, TOML/JSON files, canonical form, version resolution.

File format (one price book per file; see ``docs/PRICING.md`` and ``examples/pricebooks/``)::

    price_book_id = "standard-usd"
    currency = "USD"                       # ISO 4217, must have a minor unit

    [[versions]]
    name = "2026-01"
    effective_from = 2026-01-01T00:00:00Z  # RFC 3339 with an offset (TOML datetime or string)
    rounding_mode = "ROUND_HALF_UP"        # optional; any decimal module rounding mode name

    [[versions.prices]]
    meter = "api_calls"
    model = "tiered"                       # flat | tiered | volume | package
    tiers = [
      { up_to = 1000, unit_price = "0.10" },
      { unit_price = "0.08" },             # last tier: no up_to (JSON: null or omitted)
    ]

Numbers are read as Decimal (TOML/JSON numbers are parsed with ``parse_float=Decimal``; decimal
strings are accepted too). A Python ``float`` reaching these models raises TypeError.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from bisect import bisect_right
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from pricing.errors import MeterNotPricedError, NoPriceVersionError, PriceBookError
from pricing.models import PriceModel, build_model
from pricing.money import (
    DEFAULT_ROUNDING_MODE,
    canonical_dstr,
    to_decimal,
    validate_currency,
    validate_rounding_mode,
)
from pricing.periods import ensure_utc, isoformat_utc

METER_PATTERN = r"^[a-z0-9_.-]{1,64}$"


def _decimal_in(value: Any) -> Any:
    # float -> TypeError (propagates through pydantic unchanged); str/int/Decimal -> Decimal.
    if isinstance(value, (float, bool, str, int, Decimal)):
        return to_decimal(value, "price or quantity")
    return value


def _instant_in(value: Any) -> Any:
    if isinstance(value, datetime):
        return ensure_utc(value, "effective_from")
    if isinstance(value, str):
        return value
    raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2026-01-01T00:00:00Z")


DecimalIn = Annotated[Decimal, BeforeValidator(_decimal_in)]
_STRICT = ConfigDict(extra="forbid", frozen=True)


class Tier(BaseModel):
    model_config = _STRICT

    up_to: DecimalIn | None = Field(
        default=None, description="inclusive upper bound of the tier; omitted/null = open-ended"
    )
    unit_price: DecimalIn

    @field_validator("up_to")
    @classmethod
    def _positive_bound(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v <= 0:
            raise ValueError(f"up_to must be > 0, got {v}")
        return v

    @field_validator("unit_price")
    @classmethod
    def _non_negative(cls, v: Decimal) -> Decimal:
        return _non_negative_price(v)


def _non_negative_price(v: Decimal) -> Decimal:
    if v < 0:
        raise ValueError(f"negative price {v} is not allowed (use 0 for a free allowance)")
    return v


def _check_tiers(tiers: list[Tier]) -> list[Tier]:
    if not tiers:
        raise ValueError("at least one tier is required")
    prev: Decimal | None = None
    for i, t in enumerate(tiers):
        last = i == len(tiers) - 1
        if t.up_to is None and not last:
            raise ValueError(
                f"only the last tier may be open-ended, but tier {i + 1} of {len(tiers)} has no up_to"
            )
        if t.up_to is not None and last:
            raise ValueError(
                f"the last tier must be open-ended (omit up_to or set it to null), "
                f"but it ends at up_to {t.up_to}"
            )
        if t.up_to is not None:
            if prev is not None and t.up_to <= prev:
                raise ValueError(
                    f"tiers must be strictly ascending: tier {i + 1} up_to {t.up_to} "
                    f"is not above tier {i} up_to {prev}"
                )
            prev = t.up_to
    return tiers


class _PriceBase(BaseModel):
    model_config = _STRICT
    meter: Annotated[str, Field(pattern=METER_PATTERN)]


class FlatPrice(_PriceBase):
    model: Literal["flat"]
    unit_price: DecimalIn

    @field_validator("unit_price")
    @classmethod
    def _non_negative(cls, v: Decimal) -> Decimal:
        return _non_negative_price(v)

    def canonical(self) -> dict[str, Any]:
        return {"meter": self.meter, "model": self.model, "unit_price": canonical_dstr(self.unit_price)}


class _TierPrice(_PriceBase):
    tiers: list[Tier]
    if TYPE_CHECKING:  # each subclass's field; declared here as a field, it would come before tiers
        model: Literal["tiered", "volume"]

    @field_validator("tiers")
    @classmethod
    def _tiers_ok(cls, v: list[Tier]) -> list[Tier]:
        return _check_tiers(v)

    def canonical(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "model": self.model,
            "tiers": [
                {
                    "up_to": None if t.up_to is None else canonical_dstr(t.up_to),
                    "unit_price": canonical_dstr(t.unit_price),
                }
                for t in self.tiers
            ],
        }


class TieredPrice(_TierPrice):
    """Graduated: each tier prices only the units inside it."""

    model: Literal["tiered"]


class VolumePrice(_TierPrice):
    """All units at the price of the tier the period total falls in."""

    model: Literal["volume"]


class PackagePrice(_PriceBase):
    """Per started block of ``package_size`` units at ``package_price``."""

    model: Literal["package"]
    package_size: DecimalIn
    package_price: DecimalIn

    @field_validator("package_size")
    @classmethod
    def _size_positive(cls, v: Decimal) -> Decimal:
        if v <= 0:
            raise ValueError(f"package_size must be > 0, got {v}")
        return v

    @field_validator("package_price")
    @classmethod
    def _non_negative(cls, v: Decimal) -> Decimal:
        return _non_negative_price(v)

    def canonical(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "model": self.model,
            "package_size": canonical_dstr(self.package_size),
            "package_price": canonical_dstr(self.package_price),
        }


PriceSpec = Annotated[
    FlatPrice | TieredPrice | VolumePrice | PackagePrice, Field(discriminator="model")
]


class PriceVersion(BaseModel):
    """One immutable, effective-dated version of a price book."""

    model_config = _STRICT

    name: Annotated[str, Field(min_length=1, max_length=128)]
    effective_from: Annotated[datetime, BeforeValidator(_instant_in)]
    rounding_mode: str = DEFAULT_ROUNDING_MODE
    prices: list[PriceSpec]

    _models: dict[str, PriceModel] = PrivateAttr(default_factory=dict)
    _by_meter: dict[str, FlatPrice | TieredPrice | VolumePrice | PackagePrice] = PrivateAttr(
        default_factory=dict
    )

    @field_validator("effective_from")
    @classmethod
    def _aware_utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a UTC offset (RFC 3339, e.g. 2026-01-01T00:00:00Z)")
        return ensure_utc(v)

    @field_validator("rounding_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        return validate_rounding_mode(v)

    @field_validator("prices")
    @classmethod
    def _unique_meters(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("a version must price at least one meter")
        seen: set[str] = set()
        for p in v:
            if p.meter in seen:
                raise ValueError(f"duplicate meter {p.meter!r}: a meter may be priced once per version")
            seen.add(p.meter)
        return v

    def model_post_init(self, __context: Any) -> None:
        self._by_meter.update({p.meter: p for p in self.prices})

    # -- pricing ---------------------------------------------------------------------------

    @property
    def meters(self) -> list[str]:
        return sorted(self._by_meter)

    def price_spec(self, meter: str) -> FlatPrice | TieredPrice | VolumePrice | PackagePrice | None:
        return self._by_meter.get(meter)

    def model_for(self, meter: str) -> PriceModel | None:
        """The pricing model of ``meter`` in this version, or None if the meter is not priced."""
        m = self._models.get(meter)
        if m is None:
            spec = self._by_meter.get(meter)
            if spec is None:
                return None
            m = self._models[meter] = build_model(spec)
        return m

    # -- canonical form --------------------------------------------------------------------

    def canonical(self) -> dict[str, Any]:
        """JSON-ready content: decimals as numerically canonical strings, prices sorted by meter.
        Two versions with the same canonical form price everything identically."""
        return {
            "name": self.name,
            "effective_from": isoformat_utc(self.effective_from),
            "rounding_mode": self.rounding_mode,
            "prices": [p.canonical() for p in sorted(self.prices, key=lambda p: p.meter)],
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


class PriceBook(BaseModel):
    """A price book: id, currency and effective-dated versions (kept sorted by effective_from)."""

    model_config = _STRICT

    price_book_id: Annotated[str, Field(min_length=1, max_length=128)]
    currency: str
    description: str | None = None
    versions: list[PriceVersion]

    _starts: list[datetime] = PrivateAttr(default_factory=list)

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        return validate_currency(v)

    @field_validator("versions")
    @classmethod
    def _versions(cls, v: list[PriceVersion]) -> list[PriceVersion]:
        if not v:
            raise ValueError("a price book needs at least one version")
        names: set[str] = set()
        starts: dict[datetime, str] = {}
        for ver in v:
            if ver.name in names:
                raise ValueError(f"duplicate version name {ver.name!r}")
            names.add(ver.name)
            if ver.effective_from in starts:
                raise ValueError(
                    f"versions {starts[ver.effective_from]!r} and {ver.name!r} have the same "
                    f"effective_from {isoformat_utc(ver.effective_from)}"
                )
            starts[ver.effective_from] = ver.name
        return sorted(v, key=lambda ver: ver.effective_from)

    def model_post_init(self, __context: Any) -> None:
        self._starts.extend(ver.effective_from for ver in self.versions)

    # -- resolution ------------------------------------------------------------------------

    def version(self, name: str) -> PriceVersion:
        for ver in self.versions:
            if ver.name == name:
                return ver
        raise KeyError(f"price book {self.price_book_id!r} has no version {name!r}")

    @property
    def latest(self) -> PriceVersion:
        return self.versions[-1]

    def version_at(
        self, instant: datetime, *, customer_id: str | None = None, meter: str | None = None
    ) -> PriceVersion:
        """The version effective at ``instant``: greatest effective_from <= instant."""
        instant = ensure_utc(instant, "instant")
        i = bisect_right(self._starts, instant)
        if i == 0:
            raise NoPriceVersionError(
                price_book_id=self.price_book_id,
                instant=instant,
                customer_id=customer_id,
                meter=meter,
                first_effective_from=self._starts[0],
            )
        return self.versions[i - 1]

    def version_index_at(self, instant: datetime) -> int:
        """Index into ``versions`` of the version effective at instant (-1 if none)."""
        return bisect_right(self._starts, instant) - 1

    def model_at(
        self, meter: str, instant: datetime, *, customer_id: str | None = None
    ) -> tuple[PriceVersion, PriceModel]:
        """The version in force at ``instant`` and its model for ``meter``; clear errors otherwise."""
        ver = self.version_at(instant, customer_id=customer_id, meter=meter)
        model = ver.model_for(meter)
        if model is None:
            raise MeterNotPricedError(
                price_book_id=self.price_book_id,
                version=ver.name,
                meter=meter,
                customer_id=customer_id,
                instant=ensure_utc(instant),
            )
        return ver, model


# --- files ------------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise PriceBookError(f"duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise PriceBookError(f"{name} is not a valid price or quantity")


def _loc_text(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic error location, naming the version and meter where we can."""
    parts: list[str] = []
    node = data
    for seg in loc:
        if isinstance(seg, int):
            parts.append(f"[{seg}]")
            try:
                node = node[seg]
            except (IndexError, KeyError, TypeError):
                node = None
            if isinstance(node, dict):
                label = node.get("meter") or node.get("name")
                if isinstance(label, str):
                    parts.append(f"({label})")
        elif seg in ("flat", "tiered", "volume", "package") and isinstance(node, dict) and node.get("model") == seg:
            continue  # discriminator tag: already implied by the meter's model
        else:
            parts.append(("." if parts else "") + str(seg))
            try:
                node = node[seg] if isinstance(node, dict) else None
            except (KeyError, TypeError):
                node = None
    return "".join(parts) or "(top level)"


def _validation_message(source: str, err: ValidationError, data: Any) -> str:
    lines = [f"invalid price book {source}: {err.error_count()} error(s)"]
    for e in err.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {_loc_text(tuple(e['loc']), data)}: {msg}")
    return "\n".join(lines)


def price_book_from_data(data: Any, source: str = "<data>") -> PriceBook:
    """Validate already-parsed data (decimals as Decimal/str/int; floats raise TypeError)."""
    try:
        return PriceBook.model_validate(data)
    except ValidationError as e:
        raise PriceBookError(_validation_message(source, e, data)) from None


def parse_price_book(text: str, fmt: Literal["toml", "json"], source: str = "<text>") -> PriceBook:
    """Parse and validate a price book from TOML or JSON text."""
    try:
        if fmt == "toml":
            data = tomllib.loads(text, parse_float=Decimal)
        elif fmt == "json":
            data = json.loads(
                text,
                parse_float=Decimal,
                parse_constant=_reject_constant,
                object_pairs_hook=_no_duplicate_keys,
            )
        else:
            raise PriceBookError(f"{source}: unknown format {fmt!r} (expected toml or json)")
    except tomllib.TOMLDecodeError as e:
        raise PriceBookError(f"invalid price book {source}: not valid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise PriceBookError(f"invalid price book {source}: not valid JSON: {e}") from None
    except PriceBookError as e:
        raise PriceBookError(f"invalid price book {source}: {e}") from None
    return price_book_from_data(data, source)


def format_for_path(path: str | Path) -> Literal["toml", "json"]:
    suffix = Path(path).suffix.lower()
    if suffix == ".toml":
        return "toml"
    if suffix == ".json":
        return "json"
    raise PriceBookError(f"{path}: unsupported file extension {suffix!r} (use .toml or .json)")


def load_price_book(path: str | Path) -> PriceBook:
    """Read a price book file; the format is chosen by extension (.toml or .json)."""
    fmt = format_for_path(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PriceBookError(f"cannot read price book {path}: {e.strerror}") from None
    return parse_price_book(text, fmt, str(path))
