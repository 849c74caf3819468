"""Quotes: what Q units in one period cost under the version in force."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pricing import MeterNotPricedError, NoPriceVersionError, load_price_book, quote

BOOK = load_price_book(Path(__file__).resolve().parents[2] / "examples/pricebooks/standard-usd.toml")


def test_quote_defaults_to_the_latest_version_and_shows_each_tier():
    q = quote(BOOK, "api_calls", "1234")
    assert q.version.name == "2026-02-15"
    # 500 free + 500 × 0.10 + 234 × 0.07
    assert q.to_json()["amount"] == "66.38"
    assert [t["units"] for t in q.to_json()["tiers"]] == ["500", "500", "234"]


def test_quote_at_an_instant_uses_the_version_in_force_then():
    q = quote(BOOK, "api_calls", 1234, at=datetime(2026, 1, 20, tzinfo=UTC))
    assert q.version.name == "2026-01" and str(q.amount) == "118.72"
    doc = json.loads(q.render_json())
    assert doc["amount"] == "118.72" and doc["amount_rounded"] == "118.72"
    assert doc["tiers"][1] == {"tier": 2, "from": "1000", "to": None, "units": "234",
                               "unit_price": "0.08", "amount": "18.72"}
    text = q.render_text()
    assert "version 2026-01" in text and "118.72 USD" in text and "∞" in text


def test_quote_errors_are_clear():
    with pytest.raises(NoPriceVersionError):
        quote(BOOK, "api_calls", 1, at=datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(MeterNotPricedError):
        quote(BOOK, "nope", 1)
    with pytest.raises(TypeError):
        quote(BOOK, "api_calls", 1.5)
