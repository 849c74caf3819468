"""Price book files: validation errors, canonical form, version resolution."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from pricing import (
    MeterNotPricedError,
    NoPriceVersionError,
    PriceBookError,
    load_price_book,
    parse_price_book,
    price_book_from_data,
)

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "price_book_id": "pb",
    "currency": "USD",
    "versions": [
        {
            "name": "v1",
            "effective_from": "2026-01-01T00:00:00Z",
            "prices": [
                {"meter": "api_calls", "model": "tiered",
                 "tiers": [{"up_to": "1000", "unit_price": "0.10"}, {"unit_price": "0.08"}]},
                {"meter": "gb", "model": "flat", "unit_price": "0.08"},
            ],
        },
        {
            "name": "v2",
            "effective_from": "2026-01-15T00:00:00Z",
            "prices": [{"meter": "api_calls", "model": "flat", "unit_price": "0.05"}],
        },
    ],
}


def book_with(**changes):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        node[int(last) if last.isdigit() else last] = value
    return data


def test_example_files_load_in_both_formats():
    usd = load_price_book(ROOT / "examples/pricebooks/standard-usd.toml")
    jpy = load_price_book(ROOT / "examples/pricebooks/standard-jpy.json")
    assert usd.currency == "USD" and [v.name for v in usd.versions] == ["2026-01", "2026-02-15"]
    assert jpy.currency == "JPY"
    # a JSON number is read as an exact Decimal, not a float
    assert jpy.versions[0].price_spec("storage_gb_hours").unit_price == D("0.03")
    # offsets are normalised to UTC
    assert jpy.versions[0].effective_from == datetime(2025, 12, 31, 15, tzinfo=UTC)


INVALID = [
    # (change, words the error must contain)
    ({"versions__0__prices__0__tiers": [{"up_to": "1000", "unit_price": "0.1"},
                                        {"up_to": "500", "unit_price": "0.1"},
                                        {"unit_price": "0.1"}]},
     ["versions[0](v1).prices[0](api_calls).tiers", "strictly ascending"]),  # descending tiers
    ({"versions__0__prices__0__tiers": [{"up_to": "1000", "unit_price": "0.1"},
                                        {"up_to": "1000", "unit_price": "0.1"},
                                        {"unit_price": "0.1"}]},
     ["strictly ascending"]),  # equal edges are not strictly ascending
    ({"versions__0__prices__0__tiers": [{"up_to": "1000", "unit_price": "0.1"},
                                        {"up_to": "2000", "unit_price": "0.08"}]},
     ["tiers", "last tier must be open-ended"]),  # missing open-ended last tier
    ({"versions__0__prices__0__tiers": [{"unit_price": "0.1"}, {"unit_price": "0.08"}]},
     ["only the last tier may be open-ended"]),  # open tier in the middle
    ({"versions__0__prices__1__unit_price": "-0.01"},
     ["prices[1](gb).unit_price", "negative price"]),  # negative flat price
    ({"versions__0__prices__0__tiers__1__unit_price": "-1"},
     ["tiers[1].unit_price", "negative price"]),  # negative tier price
    ({"currency": "XYZ"}, ["currency", "not a known ISO 4217"]),  # unknown currency
    ({"currency": "usd"}, ["currency", "three upper-case letters"]),  # lower case
    ({"currency": "XAU"}, ["currency", "no minor unit"]),  # gold: not billable
    ({"versions__0__prices__1__meter": "api_calls"},
     ["versions[0](v1).prices", "duplicate meter 'api_calls'"]),  # duplicate meter
    ({"versions__1__name": "v1"}, ["versions", "duplicate version name 'v1'"]),
    ({"versions__1__effective_from": "2026-01-01T00:00:00+00:00"},
     ["versions", "same effective_from"]),  # duplicate effective_from (same instant)
    ({"versions__0__effective_from": "2026-01-01T00:00:00"},
     ["versions[0](v1).effective_from", "UTC offset"]),  # naive timestamp
    ({"versions__0__rounding_mode": "HALF_UP"},
     ["rounding_mode", "ROUND_HALF_UP"]),  # not a decimal module mode name
    ({"versions__0__prices__1__model": "stairstep"}, ["prices[1](gb)", "model"]),  # unknown model
    ({"versions__0__prices__1__unit_price": "abc"}, ["unit_price"]),  # not a number
    ({"versions__0__prices__1__unit_price": "NaN"}, ["unit_price"]),  # not finite
    ({"versions__0__prices__1__meter": "API Calls"}, ["meter"]),  # bad meter name
    ({"versions__0__prices__1__colour": "red"}, ["colour", "Extra inputs"]),  # typo'd field
    ({"versions": []}, ["versions", "at least one version"]),
    ({"versions__0__prices": []}, ["prices", "at least one meter"]),
]


@pytest.mark.parametrize(("change", "words"), INVALID)
def test_invalid_price_books_are_rejected_with_an_error_naming_the_field(change, words):
    with pytest.raises(PriceBookError) as exc:
        price_book_from_data(book_with(**change), "book.json")
    msg = str(exc.value)
    assert "book.json" in msg
    for w in words:
        assert w in msg, msg


def test_package_size_must_be_positive():
    data = book_with(versions__0__prices__1={"meter": "gb", "model": "package",
                                             "package_size": "0", "package_price": "1"})
    with pytest.raises(PriceBookError, match=r"prices\[1\]\(gb\)\.package_size: package_size must be > 0"):
        price_book_from_data(data)


def test_a_float_price_raises_type_error():
    with pytest.raises(TypeError, match="float"):
        price_book_from_data(book_with(versions__0__prices__1__unit_price=0.08))


def test_duplicate_meter_in_a_toml_file_is_rejected():
    text = """
price_book_id = "pb"
currency = "EUR"
[[versions]]
name = "v1"
effective_from = 2026-01-01T00:00:00Z
[[versions.prices]]
meter = "a"
model = "flat"
unit_price = 0.1
[[versions.prices]]
meter = "a"
model = "flat"
unit_price = 0.2
"""
    with pytest.raises(PriceBookError, match="duplicate meter 'a'"):
        parse_price_book(text, "toml", "f.toml")


def test_a_local_toml_datetime_is_rejected_as_naive():
    text = """
price_book_id = "pb"
currency = "EUR"
[[versions]]
name = "v1"
effective_from = 2026-01-01T00:00:00
[[versions.prices]]
meter = "a"
model = "flat"
unit_price = 0.1
"""
    with pytest.raises(PriceBookError, match="naive"):
        parse_price_book(text, "toml", "f.toml")


def test_duplicate_json_keys_are_an_error_not_a_silent_overwrite():
    text = '{"price_book_id": "a", "price_book_id": "b", "currency": "USD", "versions": []}'
    with pytest.raises(PriceBookError, match="duplicate key 'price_book_id'"):
        parse_price_book(text, "json", "f.json")


def test_json_numbers_keep_every_digit():
    data = book_with(versions__0__prices__1__unit_price="REPLACE")
    text = json.dumps(data).replace('"REPLACE"', "0.123456789012345678901234567890")
    book = parse_price_book(text, "json")
    assert book.versions[0].price_spec("gb").unit_price == D("0.123456789012345678901234567890")


def test_syntax_errors_and_unknown_extensions_are_reported(tmp_path):
    with pytest.raises(PriceBookError, match="not valid TOML"):
        parse_price_book("price_book_id = ", "toml", "x.toml")
    with pytest.raises(PriceBookError, match="not valid JSON"):
        parse_price_book("{", "json", "x.json")
    p = tmp_path / "book.yaml"
    p.write_text("x")
    with pytest.raises(PriceBookError, match="unsupported file extension"):
        load_price_book(p)


def test_canonical_json_ignores_formatting_and_order_but_not_prices():
    a = price_book_from_data(BASE).versions[0]
    reordered = book_with(versions__0__prices=list(reversed(BASE["versions"][0]["prices"])),
                          versions__0__effective_from="2026-01-01T01:00:00+01:00")
    reordered["versions"][0]["prices"][0]["unit_price"] = "0.080"  # same number, other scale
    b = price_book_from_data(reordered).versions[0]
    assert a.canonical_json() == b.canonical_json()
    assert a.sha256() == b.sha256()
    c = price_book_from_data(book_with(versions__0__prices__1__unit_price="0.081")).versions[0]
    assert c.sha256() != a.sha256()
    content = json.loads(a.canonical_json())
    assert content["effective_from"] == "2026-01-01T00:00:00Z"
    assert content["prices"][0] == {
        "meter": "api_calls", "model": "tiered",
        "tiers": [{"up_to": "1000", "unit_price": "0.1"}, {"up_to": None, "unit_price": "0.08"}],
    }
    # canonical content round-trips into an equal version
    from pricing.book import PriceVersion

    assert PriceVersion.model_validate(content).sha256() == a.sha256()


RESOLUTION = [
    # (instant, expected version)
    ("2026-01-01T00:00:00Z", "v1"),  # exactly at the first effective_from
    ("2026-01-14T23:59:59.999999Z", "v1"),  # the last instant before v2
    ("2026-01-15T00:00:00Z", "v2"),  # exactly at v2's effective_from
    ("2026-01-15T01:00:00+01:00", "v2"),  # same instant written with an offset
    ("2030-01-01T00:00:00Z", "v2"),  # far future: latest version
]


@pytest.mark.parametrize(("instant", "expected"), RESOLUTION)
def test_the_version_in_force_is_the_greatest_effective_from_at_or_before_the_instant(instant, expected):
    book = price_book_from_data(BASE)
    assert book.version_at(datetime.fromisoformat(instant)).name == expected


def test_before_the_first_version_the_error_names_customer_meter_and_instant():
    book = price_book_from_data(BASE)
    with pytest.raises(NoPriceVersionError) as exc:
        book.model_at("api_calls", datetime(2025, 12, 31, 23, tzinfo=UTC), customer_id="acme")
    msg = str(exc.value)
    assert "'acme'" in msg and "'api_calls'" in msg and "2025-12-31T23:00:00" in msg
    assert exc.value.customer_id == "acme" and exc.value.meter == "api_calls"


def test_a_meter_missing_from_the_version_in_force_is_an_error_not_zero():
    book = price_book_from_data(BASE)
    assert book.model_at("gb", datetime(2026, 1, 2, tzinfo=UTC))[1].amount(D(10)) == D("0.80")
    with pytest.raises(MeterNotPricedError, match="meter 'gb' has no price for customer 'acme'.*'v2'"):
        book.model_at("gb", datetime(2026, 1, 20, tzinfo=UTC), customer_id="acme")


def test_a_naive_instant_is_an_error():
    book = price_book_from_data(BASE)
    with pytest.raises(ValueError, match="naive"):
        book.version_at(datetime(2026, 1, 20))  # noqa: DTZ001 - naive on purpose: it must be refused
