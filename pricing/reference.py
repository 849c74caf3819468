"""Reference data files (customers, tax rates): pydantic models and TOML/JSON parsing. Pure.

Customers file::

    [[customers]]
    customer_id = "acme"
    price_book_id = "standard-usd"
    currency = "USD"
    tax_region = "US-CA"       # optional
    name = "Acme Corp"         # optional
    payment_terms_days = 14    # optional: net days; default billing.payment_terms_days

Tax rates file::

    [[tax_rates]]
    region = "US-CA"
    effective_from = 2025-01-01T00:00:00Z
    rate = "0.0725"            # 0 <= rate < 1, at most 6 fractional digits
    description = "..."        # optional
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from pricing.book import DecimalIn, _instant_in, _loc_text, _no_duplicate_keys, format_for_path
from pricing.errors import PriceBookError
from pricing.money import validate_currency
from pricing.periods import ensure_utc, isoformat_utc

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ReferenceFileError(PriceBookError):
    """A customers or tax rates file is invalid (message names the file and each field)."""


class Customer(BaseModel):
    model_config = _STRICT

    customer_id: Annotated[str, Field(min_length=1, max_length=128)]
    price_book_id: Annotated[str, Field(min_length=1, max_length=128)]
    currency: str
    tax_region: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    name: str | None = None
    # net days to pay; None = the configured default (billing.payment_terms_days), fixed at issue
    payment_terms_days: Annotated[int, Field(ge=0, le=3650)] | None = None

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        return validate_currency(v)


class CustomersFile(BaseModel):
    model_config = _STRICT
    customers: list[Customer]

    @field_validator("customers")
    @classmethod
    def _unique(cls, v: list[Customer]) -> list[Customer]:
        seen: set[str] = set()
        for c in v:
            if c.customer_id in seen:
                raise ValueError(f"duplicate customer_id {c.customer_id!r}")
            seen.add(c.customer_id)
        return v


class TaxRate(BaseModel):
    model_config = _STRICT

    region: Annotated[str, Field(min_length=1, max_length=64)]
    effective_from: Annotated[datetime, BeforeValidator(_instant_in)]
    rate: DecimalIn
    description: str | None = None

    @field_validator("effective_from")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a UTC offset (RFC 3339, e.g. 2026-01-01T00:00:00Z)")
        return ensure_utc(v)

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: Decimal) -> Decimal:
        if not (0 <= v < 1):
            raise ValueError(f"rate must be a fraction 0 <= rate < 1 (0.2 = 20 %), got {v}")
        if v.as_tuple().exponent < -6:  # type: ignore[operator]  # v is finite: its exponent is an int
            raise ValueError(f"rate {v} has more than 6 fractional digits (stored as numeric(9, 6))")
        return v


class TaxRatesFile(BaseModel):
    model_config = _STRICT
    tax_rates: list[TaxRate]

    @field_validator("tax_rates")
    @classmethod
    def _unique(cls, v: list[TaxRate]) -> list[TaxRate]:
        seen: set[tuple[str, datetime]] = set()
        for t in v:
            key = (t.region, t.effective_from)
            if key in seen:
                raise ValueError(
                    f"duplicate tax rate for region {t.region!r} at {isoformat_utc(t.effective_from)}"
                )
            seen.add(key)
        return v


def _read(path: str | Path, what: str) -> Any:
    fmt = format_for_path(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        if fmt == "toml":
            return tomllib.loads(text, parse_float=Decimal)
        return json.loads(text, parse_float=Decimal, object_pairs_hook=_no_duplicate_keys)
    except OSError as e:
        raise ReferenceFileError(f"cannot read {what} file {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ReferenceFileError(f"invalid {what} file {path}: not valid {fmt.upper()}: {e}") from None
    except PriceBookError as e:
        raise ReferenceFileError(f"invalid {what} file {path}: {e}") from None


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Any, source: str, what: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"invalid {what} file {source}: {e.error_count()} error(s)"]
        for err in e.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {_loc_text(tuple(err['loc']), data)}: {msg}")
        raise ReferenceFileError("\n".join(lines)) from None


def load_customers(path: str | Path) -> list[Customer]:
    return _validate(CustomersFile, _read(path, "customers"), str(path), "customers").customers


def load_tax_rates(path: str | Path) -> list[TaxRate]:
    return _validate(TaxRatesFile, _read(path, "tax rates"), str(path), "tax rates").tax_rates


def customers_from_data(data: Any, source: str = "<data>") -> list[Customer]:
    return _validate(CustomersFile, data, source, "customers").customers


def tax_rates_from_data(data: Any, source: str = "<data>") -> list[TaxRate]:
    return _validate(TaxRatesFile, data, source, "tax rates").tax_rates
