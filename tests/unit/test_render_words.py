"""jobs.batch.render: tier breakdowns in words, amounts and quantities as printed."""

from __future__ import annotations

from decimal import Decimal

from jobs.batch.render import _tiers_from_charge, _words, money, qty, unit_price

D = Decimal
TIERS = [{"tier": 1, "from": "0", "to": "1000", "units": "1000", "unit_price": "0.1", "amount": "100"},
         {"tier": 2, "from": "1000", "to": None, "units": "234", "unit_price": "0.08", "amount": "18.72"},
         {"tier": 3, "from": "5000", "to": None, "units": "0", "unit_price": "0.05", "amount": "0"}]


def test_tiers_in_words():
    assert _words(TIERS, 2, "USD") == (
        "first 1,000 at 0.10 USD each = 100.00; next 234 at 0.08 USD each = 18.72")
    assert _words(TIERS[:1], 2, "USD") == "all 1,000 at 0.10 USD each = 100.00"
    assert _words([{**TIERS[0], "units": "0"}], 2, "USD") is None
    pkg = [{"from": "0", "units": "250", "unit_price": "5", "amount": "15", "packages": "3",
            "package_size": "100"}]
    assert _words(pkg, 0, "JPY") == "250 units in 3 package(s) of 100 at 5 JPY per package = 15"


def test_only_a_max_meters_charge_explains_the_period():
    calc = {"aggregation": "max", "tiers": TIERS[:1], "max": {"after": {"quantity": "10"}}}
    assert _tiers_from_charge(calc, 2, "USD") == (
        "priced on the period's maximum, 10: all 1,000 at 0.10 USD each = 100.00")
    # a sum meter's charge holds its window's share only: the period is priced elsewhere
    assert _tiers_from_charge({**calc, "aggregation": "sum"}, 2, "USD") is None
    assert _tiers_from_charge(None, 2, "USD") is None


def test_figures_as_printed():
    assert money(D("1234.5"), 2) == "1,234.50"
    assert money(D("-20.000000"), 2) == "-20.00"
    assert money(D("1000"), 0) == "1,000"
    assert qty(D("1234.500000000000")) == "1,234.5"
    assert unit_price(D("0.1"), 2) == "0.10" and unit_price(D("0.00018"), 2) == "0.00018"
