"""Pricing models: golden examples from the seed documents and boundary cases."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricing.models import FlatModel, PackageModel, TieredModel, VolumeModel
from pricing.money import CTX

TIERED = TieredModel([(D(1000), D("0.10")), (None, D("0.08"))])
VOLUME = VolumeModel([(D(1000), D("0.10")), (None, D("0.08"))])
FLAT = FlatModel(D("0.08"))
PACKAGE = PackageModel(D(100), D("4.50"))


def test_flat_1234_units_at_0_08_cost_98_72():
    assert FLAT.amount(D(1234)) == D("98.72")


def test_tiered_1234_units_cost_118_72():
    assert TIERED.amount(D(1234)) == D("118.72")


def test_volume_1234_units_cost_98_72():
    assert VOLUME.amount(D(1234)) == D("98.72")


def test_golden_tiered_breakdown_lists_each_tier_with_units_and_amount():
    assert TIERED.breakdown(D(1234)).to_json() == {
        "quantity": "1234",
        "amount": "118.72",
        "tiers": [
            {"tier": 1, "from": "0", "to": "1000", "units": "1000", "unit_price": "0.10",
             "amount": "100.00"},
            {"tier": 2, "from": "1000", "to": None, "units": "234", "unit_price": "0.08",
             "amount": "18.72"},
        ],
    }


def test_golden_volume_breakdown_puts_all_units_in_the_tier_the_total_falls_in():
    assert VOLUME.breakdown(D(1234)).to_json() == {
        "quantity": "1234",
        "amount": "98.72",
        "tiers": [
            {"tier": 1, "from": "0", "to": "1000", "units": "0", "unit_price": "0.10",
             "amount": "0.00"},
            {"tier": 2, "from": "1000", "to": None, "units": "1234", "unit_price": "0.08",
             "amount": "98.72"},
        ],
    }


def test_golden_flat_and_package_breakdowns():
    assert FLAT.breakdown(D(1234)).to_json() == {
        "quantity": "1234",
        "amount": "98.72",
        "tiers": [{"tier": 1, "from": "0", "to": None, "units": "1234", "unit_price": "0.08",
                   "amount": "98.72"}],
    }
    assert PACKAGE.breakdown(D(201)).to_json() == {
        "quantity": "201",
        "amount": "13.50",
        "tiers": [{"tier": 1, "from": "0", "to": None, "units": "201", "unit_price": "4.50",
                   "amount": "13.50", "packages": "3", "package_size": "100"}],
    }


BOUNDARIES = [
    # (model, quantity, expected amount)
    (TIERED, "0", "0"),  # zero units cost nothing
    (TIERED, "1000", "100.00"),  # exactly at the tier edge: all in tier 1 (up_to is inclusive)
    (TIERED, "1001", "100.08"),  # one unit past the edge: that unit at the tier-2 price
    (TIERED, "1000.5", "100.040"),  # fractional unit past the edge
    (TIERED, "999.999999999999", "99.9999999999999"),  # 12 fractional digits just below the edge
    # 10^15 units (+12 fractional digits) stay exact: 100 + (10^15 + 1e-12 - 1000) * 0.08
    (TIERED, "1000000000000000.000000000001", "80000000000020.00000000000008"),
    (VOLUME, "0", "0"),  # zero units: first tier, nothing to pay
    (VOLUME, "1000", "100.00"),  # exactly at the edge: whole quantity at 0.10
    (VOLUME, "1001", "80.08"),  # one unit past: whole quantity drops to 0.08 (cheaper than 1000!)
    (VOLUME, "1000.5", "80.040"),  # fractional past the edge
    (VOLUME, "1000000000000000", "80000000000000.00"),  # 10^15 units
    (FLAT, "0", "0"),  # zero
    (FLAT, "1000.5", "80.040"),  # fractional
    (FLAT, "1000000000000000.000000000001", "80000000000000.00000000000008"),  # 10^15 + 1e-12, exact
    (PACKAGE, "0", "0"),  # no unit, no package started
    (PACKAGE, "0.001", "4.50"),  # a sliver starts a package
    (PACKAGE, "100", "4.50"),  # exactly N: one package
    (PACKAGE, "101", "9.00"),  # N+1 starts a second package
    (PACKAGE, "200", "9.00"),  # exactly 2N
    (PACKAGE, "1000000000000000", "45000000000000.00"),  # 10^15 units = 10^13 packages
]


@pytest.mark.parametrize(("model", "quantity", "expected"), BOUNDARIES)
def test_boundary_amounts_are_exact(model, quantity, expected):
    amount = model.amount(D(quantity))
    assert amount == D(expected)
    assert model.breakdown(D(quantity)).amount == amount


def test_a_free_allowance_is_a_tier_priced_zero():
    m = TieredModel([(D(500), D(0)), (None, D("0.10"))])
    assert m.amount(D(500)) == 0
    assert m.amount(D(501)) == D("0.10")


def test_decimal_package_size_is_exact():
    m = PackageModel(D("0.3"), D(1))
    assert m.amount(D("0.9")) == 3  # exactly three packages, no binary fraction error
    assert m.amount(D("0.90001")) == 4


@pytest.mark.parametrize("model", [FLAT, TIERED, VOLUME, PACKAGE])
def test_a_float_quantity_raises_type_error(model):
    with pytest.raises(TypeError):
        model.amount(1234.0)
    with pytest.raises(TypeError):
        model.breakdown(0.5)


@pytest.mark.parametrize("model", [FLAT, TIERED, VOLUME, PACKAGE])
def test_a_negative_quantity_is_rejected(model):
    with pytest.raises(ValueError):
        model.amount(D(-1))


quantities = st.decimals(min_value=0, max_value=10**15, places=12, allow_nan=False,
                         allow_infinity=False)
prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def tier_lists(draw):
    n = draw(st.integers(1, 5))
    edges = sorted(draw(st.sets(st.decimals(min_value="0.001", max_value=10**9, places=3),
                                min_size=n - 1, max_size=n - 1)))
    ps = draw(st.lists(prices, min_size=n, max_size=n))
    return [*zip(edges, ps, strict=False), (None, ps[-1])]


@given(tier_lists(), quantities, quantities)
def test_graduated_tiered_is_monotone_non_decreasing_in_quantity(tiers, a, b):
    m = TieredModel(tiers)
    lo, hi = min(a, b), max(a, b)
    assert m.amount(lo) <= m.amount(hi)


@given(tier_lists(), quantities)
def test_breakdown_lines_sum_to_the_amount(tiers, q):
    for m in (TieredModel(tiers), VolumeModel(tiers)):
        r = m.breakdown(q)
        # summed in the engine's context: the ambient one (28 digits) would round
        total = D(0)
        for ln in r.lines:
            total = CTX.add(total, ln.amount)
        assert total == r.amount == m.amount(q)


@given(tier_lists(), quantities, quantities)
def test_tiered_delta_lines_equal_the_difference_of_two_breakdowns(tiers, a, b):
    from pricing.models import diff_lines

    m = TieredModel(tiers)
    assert m.delta_lines(a, b) == diff_lines(m.breakdown(b), m.breakdown(a))
