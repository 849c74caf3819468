"""Money: Decimal only, explicit context, ISO 4217 minor units and explicit rounding modes."""

from __future__ import annotations

import decimal
from decimal import Decimal as D

import pytest

from pricing.money import minor_units, round_money, to_decimal

ROUNDING = [
    # (amount, currency, mode, rounded)
    ("98.725", "USD", "ROUND_HALF_UP", "98.73"),  # half goes up
    ("98.725", "USD", "ROUND_HALF_EVEN", "98.72"),  # half goes to the even neighbour
    ("98.729", "USD", "ROUND_DOWN", "98.72"),  # truncation
    ("2.5", "JPY", "ROUND_HALF_UP", "3"),  # JPY has no minor unit: half-up
    ("2.5", "JPY", "ROUND_HALF_EVEN", "2"),  # JPY half-even: to 2
    ("3.5", "JPY", "ROUND_HALF_EVEN", "4"),  # JPY half-even: to 4
    ("2.9", "JPY", "ROUND_DOWN", "2"),  # JPY down
    ("1.0005", "KWD", "ROUND_HALF_UP", "1.001"),  # KWD has 3 decimals: half-up
    ("1.0005", "KWD", "ROUND_HALF_EVEN", "1.000"),  # KWD half-even
    ("1.0009", "KWD", "ROUND_DOWN", "1.000"),  # KWD down
    ("0.0015", "BHD", "ROUND_HALF_UP", "0.002"),  # BHD: 3 decimals too
    ("-0.005", "EUR", "ROUND_HALF_UP", "-0.01"),  # negative (credit) half-up is away from zero
    ("-0.005", "EUR", "ROUND_HALF_EVEN", "0.00"),  # negative half-even
    ("12.34567", "CLF", "ROUND_HALF_UP", "12.3457"),  # CLF has 4 decimals
    ("80000000000020.00000000000008", "USD", "ROUND_HALF_UP", "80000000000020.00"),  # huge amount
]


@pytest.mark.parametrize(("amount", "currency", "mode", "expected"), ROUNDING)
def test_round_money_rounds_to_the_minor_unit_with_the_given_mode(amount, currency, mode, expected):
    r = round_money(D(amount), currency, mode)
    assert r.precise == D(amount)
    assert r.rounded == D(expected)
    assert str(r.rounded) == expected  # the scale is the minor unit
    assert r.currency == currency and r.rounding_mode == mode


def test_round_money_ignores_the_ambient_context():
    with decimal.localcontext() as ctx:
        ctx.rounding = decimal.ROUND_FLOOR
        ctx.prec = 3
        ctx.traps[decimal.Inexact] = True
        assert round_money(D("98.725"), "USD", "ROUND_HALF_UP").rounded == D("98.73")


@pytest.mark.parametrize(("currency", "digits"), [("JPY", 0), ("USD", 2), ("EUR", 2), ("KWD", 3),
                                                  ("BHD", 3), ("CLF", 4), ("KRW", 0)])
def test_minor_units_follow_iso_4217(currency, digits):
    assert minor_units(currency) == digits


def test_unknown_currency_and_mode_are_errors():
    with pytest.raises(ValueError, match="not a known ISO 4217"):
        round_money(D(1), "ABC", "ROUND_HALF_UP")
    with pytest.raises(ValueError, match="rounding mode"):
        round_money(D(1), "USD", "HALF_UP")


def test_a_float_reaching_money_code_raises_type_error():
    with pytest.raises(TypeError):
        round_money(98.725, "USD", "ROUND_HALF_UP")
    with pytest.raises(TypeError):
        to_decimal(0.1)


def test_to_decimal_accepts_strings_ints_and_decimals_but_not_nan():
    assert to_decimal("0.10") == D("0.10") and to_decimal(3) == 3 and to_decimal(D("1E+3")) == 1000
    with pytest.raises(ValueError):
        to_decimal("NaN")
    with pytest.raises(ValueError):
        to_decimal("1,5")
