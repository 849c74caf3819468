"""Decimal-only money: the arithmetic context, input coercion, currencies and rounding.

Rules (see DESIGN.md section 4):

* Money and quantities are :class:`decimal.Decimal`. A ``float`` reaching this code raises
  ``TypeError`` — floats have already lost digits, so there is nothing safe to do with them.
* Arithmetic never uses the ambient (thread-local) decimal context. It goes through :data:`CTX`,
  60 significant digits, ROUND_HALF_EVEN, trapping InvalidOperation, DivisionByZero, Overflow *and*
  Inexact: 10^15 units with 12 fractional digits times a 12-digit price needs ~40 digits, so every
  rating result is exact, and if an input were ever large enough to need rounding we raise instead
  of silently rounding.
* Rounding to the currency's minor unit happens once, at the invoice line, with
  :func:`round_money` and an explicit rounding mode.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal

from iso4217 import Currency

#: The one arithmetic context of the rating engine (exact or raise).
CTX = decimal.Context(
    prec=60,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=-999999,
    Emax=999999,
    traps=[
        decimal.InvalidOperation,
        decimal.DivisionByZero,
        decimal.Overflow,
        decimal.Inexact,
    ],
)

#: Context used for quantize() at invoice lines: rounding is intended there, so Inexact is not
#: trapped; the rounding mode is always passed explicitly to quantize().
ROUNDING_CTX = decimal.Context(
    prec=60,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=-999999,
    Emax=999999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

ZERO = Decimal(0)

#: The decimal module's rounding mode names (``decimal.ROUND_HALF_UP == "ROUND_HALF_UP"``).
ROUNDING_MODES: frozenset[str] = frozenset(
    {
        decimal.ROUND_UP,
        decimal.ROUND_DOWN,
        decimal.ROUND_CEILING,
        decimal.ROUND_FLOOR,
        decimal.ROUND_HALF_UP,
        decimal.ROUND_HALF_DOWN,
        decimal.ROUND_HALF_EVEN,
        decimal.ROUND_05UP,
    }
)
DEFAULT_ROUNDING_MODE = decimal.ROUND_HALF_UP


def to_decimal(value: object, what: str = "value") -> Decimal:
    """Coerce a money/quantity input to a finite Decimal.

    Accepts ``Decimal``, ``int`` (not ``bool``) and decimal strings. A ``float`` raises
    ``TypeError``; anything non-finite or unparsable raises ``ValueError``.
    """
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, float):
        raise TypeError(
            f"{what}: float {value!r} is not accepted in money code; pass a Decimal, an int or a "
            "decimal string (parse JSON with parse_float=Decimal)"
        )
    elif isinstance(value, bool):
        raise TypeError(f"{what}: bool {value!r} is not a quantity")
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except decimal.InvalidOperation:
            raise ValueError(f"{what}: {value!r} is not a decimal number") from None
    else:
        raise TypeError(f"{what}: {type(value).__name__} is not a decimal number")
    if not d.is_finite():
        raise ValueError(f"{what}: {value!r} is not finite")
    return d


def dstr(d: Decimal) -> str:
    """Render a Decimal as a plain decimal string (no exponent), keeping its scale."""
    s = str(d)  # fast; uses an exponent only for very small/large exponents
    return format(d, "f") if "E" in s else s


def canonical_dstr(d: Decimal) -> str:
    """Numerically canonical decimal string: ``0.10``, ``0.1`` and ``1E-1`` all give ``0.1``."""
    if d.is_zero():
        return "0"
    return format(d.normalize(CTX), "f")


# --- currencies -------------------------------------------------------------------------------
# Minor units come from the ``iso4217`` package (ISO 4217 list maintained upstream), not a hand table.


def _currency(code: str) -> Currency:
    if not isinstance(code, str) or len(code) != 3 or not code.isalpha() or not code.isupper():
        raise ValueError(f"currency {code!r} is not an ISO 4217 code (three upper-case letters)")
    try:
        cur = Currency(code)
    except ValueError:
        raise ValueError(f"currency {code!r} is not a known ISO 4217 currency") from None
    if cur.exponent is None:
        raise ValueError(
            f"currency {code!r} ({cur.currency_name}) has no minor unit in ISO 4217 and cannot be billed"
        )
    return cur


def validate_currency(code: str) -> str:
    """Return ``code`` if it is a billable ISO 4217 currency, else raise ValueError naming it."""
    _currency(code)
    return code


def minor_units(code: str) -> int:
    """ISO 4217 exponent: JPY 0, USD 2, KWD 3, CLF 4."""
    exp = _currency(code).exponent
    assert exp is not None
    return exp


def validate_rounding_mode(mode: str) -> str:
    if mode not in ROUNDING_MODES:
        raise ValueError(
            f"rounding mode {mode!r} is not one of {', '.join(sorted(ROUNDING_MODES))}"
        )
    return mode


@dataclass(frozen=True, slots=True)
class RoundedAmount:
    """A precise amount and its value rounded to the currency's minor unit."""

    precise: Decimal
    rounded: Decimal
    currency: str
    rounding_mode: str
    minor_units: int

    @property
    def rounding_difference(self) -> Decimal:
        return CTX.subtract(self.rounded, self.precise)

    def to_json(self) -> dict[str, object]:
        return {
            "precise": dstr(self.precise),
            "rounded": dstr(self.rounded),
            "currency": self.currency,
            "rounding_mode": self.rounding_mode,
            "minor_units": self.minor_units,
        }


def round_money(amount: Decimal, currency: str, rounding_mode: str) -> RoundedAmount:
    """Round ``amount`` to ``currency``'s minor unit with the explicit ``rounding_mode``.

    The ambient decimal context is never consulted: ``quantize`` gets both the mode and a context.
    """
    precise = to_decimal(amount, "amount")
    mode = validate_rounding_mode(rounding_mode)
    exp = minor_units(currency)
    rounded = precise.quantize(Decimal(1).scaleb(-exp, ROUNDING_CTX), rounding=mode, context=ROUNDING_CTX)
    if rounded.is_zero() and rounded.is_signed():
        rounded = rounded.copy_abs()  # no "-0.00" on an invoice
    return RoundedAmount(precise, rounded, currency, mode, exp)
