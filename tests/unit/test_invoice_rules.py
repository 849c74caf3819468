"""The invoice rules (billing/invoice_rules.py, docs/INVOICING.md) on worked examples. The same
model is checked against the SQL invoice job on random cases in
tests/integration/test_invoice_rules_vs_sql.py."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.invoice_rules import (
    Credit,
    DocumentKind,
    Issued,
    apply_credits,
    build_document,
    document_kind,
    in_force,
    line_amount,
    tax_of,
)

D = Decimal
FEB = datetime(2026, 2, 1, tzinfo=UTC)  # end of January 2026
JAN5 = datetime(2026, 1, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("charges", "issued", "scale", "mode", "expected"),
    [
        # first document: Σ rounded once (1234 × 0.0123455 = 15.234347 -> 15.23)
        (["0.0123455", "15.2220015"], Issued(), 2, "ROUND_HALF_UP", "15.23"),
        # the price book's mode decides: 12.345 half-even -> 12.34, half-up -> 12.35, up -> 12.35
        (["12.345"], Issued(), 2, "ROUND_HALF_EVEN", "12.34"),
        (["12.345"], Issued(), 2, "ROUND_HALF_UP", "12.35"),
        (["12.3400001"], Issued(), 2, "ROUND_UP", "12.35"),
        (["12.349"], Issued(), 2, "ROUND_DOWN", "12.34"),
        # JPY has no minor unit, KWD three
        (["456.58"], Issued(), 0, "ROUND_HALF_UP", "457"),
        (["1.23456"], Issued(), 3, "ROUND_HALF_UP", "1.235"),
        # a correction: round(10.004 + 0.004) - 10.00 = 0.01 (rounding each alone would give 0.00)
        (["0.004"], Issued(D("10.004"), D("10.00")), 2, "ROUND_HALF_UP", "0.01"),
        # ...and no drift the other way: round(10.006 + 0.003) - 10.01 = 0.00
        (["0.003"], Issued(D("10.006"), D("10.01")), 2, "ROUND_HALF_UP", "0.00"),
        # a negative correction (charges credited back): round(5.00 - 7.125) - 5.00 = -7.13
        (["-7.125"], Issued(D("5.00"), D("5.00")), 2, "ROUND_HALF_UP", "-7.13"),
        # half-even on a negative tie
        (["-0.125"], Issued(), 2, "ROUND_HALF_EVEN", "-0.12"),
        # a sum that rounds to zero is 0, never -0
        (["-0.001"], Issued(), 2, "ROUND_HALF_UP", "0.00"),
    ],
)
def test_a_line_is_the_period_rounded_once_minus_what_was_issued(
    charges, issued, scale, mode, expected
) -> None:
    got = line_amount([D(c) for c in charges], issued, scale, mode)
    assert got == D(expected) and str(got) == expected


@pytest.mark.parametrize(
    ("standard_issued", "subtotal", "kind"),
    [
        (False, D("12.00"), DocumentKind.STANDARD),
        (False, D("-3.00"), DocumentKind.STANDARD),  # the first document is standard, whatever sign
        (True, D("0.01"), DocumentKind.CORRECTION),
        (True, D("0.00"), DocumentKind.CORRECTION),  # a zero net change still links its charges
        (True, D("-0.01"), DocumentKind.CREDIT_NOTE),
    ],
)
def test_the_kind_follows_the_issued_standard_invoice_and_the_sign(
    standard_issued, subtotal, kind
) -> None:
    assert document_kind(standard_issued, subtotal) is kind


def credit(
    cid: str, amount: str, *, day: int = 1, applied: str = "0", currency: str = "USD"
) -> Credit:
    return Credit(cid, currency, datetime(2026, 1, day, tzinfo=UTC), D(amount), D(applied))


@pytest.mark.parametrize(
    ("subtotal", "credits", "expected"),
    [
        # larger than the subtotal: applies the subtotal, the rest carries over
        ("98.72", [credit("a", "150")], [("a", "98.72")]),
        # smaller ones are used up
        ("98.72", [credit("a", "30"), credit("b", "50", day=2)], [("a", "30"), ("b", "50")]),
        # grant order, not id order: b (day 1) before a (day 2)
        ("98.72", [credit("a", "100", day=2), credit("b", "60")], [("b", "60"), ("a", "38.72")]),
        # same grant time: credit_id decides
        ("10", [credit("b", "8"), credit("a", "8")], [("a", "8"), ("b", "2")]),
        # what other documents applied already is not available; a used-up credit is skipped
        (
            "10",
            [credit("a", "5", applied="5"), credit("b", "20", day=2, applied="15")],
            [("b", "5")],
        ),
        # whole minor units: 3.999 left of a credit counts as 3.99
        ("10", [credit("a", "3.999")], [("a", "3.99")]),
        # another currency, or granted at/after the period's end: not usable
        ("10", [credit("a", "5", currency="EUR"), Credit("b", "USD", FEB, D("5"))], []),
        # a credit note, a zero subtotal: no credit consumed
        ("-5", [credit("a", "5")], []),
        ("0", [credit("a", "5")], []),
    ],
)
def test_credits_apply_in_grant_order_up_to_the_subtotal(subtotal, credits, expected) -> None:
    got = apply_credits(D(subtotal), credits, currency="USD", scale=2, period_end=FEB)
    assert got == [(cid, D(a)) for cid, a in expected]


@pytest.mark.parametrize(
    ("base", "rate", "scale", "expected"),
    [
        ("118.72", "0.0725", 2, "8.61"),  # 8.6072
        ("18.72", "0.10", 2, "1.87"),  # 1.872
        ("0.05", "0.10", 2, "0.01"),  # 0.005 half-up
        ("-0.05", "0.10", 2, "-0.01"),  # a credit note's tax is negative, half-up away from zero
        ("457", "0.10", 0, "46"),  # 45.7 yen
        ("10", None, 2, "0"),  # no tax region
    ],
)
def test_tax_is_the_rate_on_the_subtotal_after_credits_rounded_half_up(
    base, rate, scale, expected
) -> None:
    assert tax_of(D(base), None if rate is None else D(rate), scale) == D(expected)


def test_the_rate_in_force_is_the_latest_effective_strictly_before_the_period_end() -> None:
    rates = {
        datetime(2025, 1, 1, tzinfo=UTC): D("0.19"),
        datetime(2026, 1, 15, tzinfo=UTC): D("0.20"),
        FEB: D("0.21"),
    }
    assert in_force(rates, FEB) == D("0.20")
    assert in_force(rates, datetime(2025, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        (
            "tiered with tax (golden)",
            dict(
                charges={"api_calls": ["40", "50", "28.72"]}, currency="USD", tax_rate=D("0.0725")
            ),
            dict(kind="standard", subtotal="118.72", credits="0", tax="8.61", total="127.33"),
        ),
        (
            "credit larger than the subtotal carries over (golden)",
            dict(
                charges={"api_calls": ["98.72"]},
                currency="USD",
                tax_rate=D("0.20"),
                credits=[credit("c1", "150")],
            ),
            dict(kind="standard", subtotal="98.72", credits="98.72", tax="0", total="0"),
        ),
        (
            "JPY rounds to whole yen (golden)",
            dict(charges={"api_calls": ["222", "234.58"]}, currency="JPY", tax_rate=D("0.10")),
            dict(kind="standard", subtotal="457", credits="0", tax="46", total="503"),
        ),
        (
            "two meters, credits then tax on the rest",
            dict(
                charges={"api_calls": ["10.005"], "seats": ["5"]},
                currency="USD",
                tax_rate=D("0.19"),
                credits=[credit("c1", "4.999")],
            ),
            dict(kind="standard", subtotal="15.01", credits="4.99", tax="1.90", total="11.92"),
        ),
        (
            "a correction consumes credit, a credit note does not",
            dict(
                charges={"api_calls": ["2.50"]},
                currency="USD",
                standard_issued=True,
                issued={"api_calls": Issued(D("10"), D("10.00"))},
                credits=[credit("c1", "1")],
            ),
            dict(kind="correction", subtotal="2.50", credits="1.00", tax="0", total="1.50"),
        ),
        (
            "a credit note (the period consumed no credit, charged 1.00 tax)",
            dict(
                charges={"api_calls": ["-2.504"]},
                currency="USD",
                standard_issued=True,
                issued={"api_calls": Issued(D("10"), D("10.00"))},
                credits=[credit("c1", "1")],
                tax_rate=D("0.10"),
                tax_charged=D("1.00"),
            ),
            dict(kind="credit_note", subtotal="-2.50", credits="0", tax="-0.25", total="-2.75"),
        ),
        (
            "a credit note first gives back the credit the period consumed, the last granted first",
            dict(
                charges={"api_calls": ["-2.50"]},
                currency="USD",
                standard_issued=True,
                issued={"api_calls": Issued(D("10"), D("10.00"))},
                credits=[credit("c1", "1", applied="1"), credit("c2", "2", day=2, applied="2")],
                consumed_in_period={"c1": D("1"), "c2": D("2")},
                tax_rate=D("0.10"),
                tax_charged=D("0.70"),
            ),
            # c2 (granted later) gives back 2, c1 0.50; nothing is refunded in money, so no tax
            dict(kind="credit_note", subtotal="-2.50", credits="-2.50", tax="0", total="0"),
        ),
        (
            "a credit note refunds no more tax than the period charged (fully credit-funded: none)",
            dict(
                charges={"api_calls": ["-5"]},
                currency="USD",
                standard_issued=True,
                issued={"api_calls": Issued(D("10"), D("10.00"))},
                credits=[credit("c1", "2", applied="2")],
                consumed_in_period={"c1": D("2")},
                tax_rate=D("0.10"),
                tax_charged=D("0.10"),
            ),
            # 2 credit back, 3 refunded in money: tax would be -0.30, capped at the 0.10 charged
            dict(kind="credit_note", subtotal="-5.00", credits="-2.00", tax="-0.10", total="-3.10"),
        ),
    ],
)
def test_a_document_adds_up_lines_credits_and_tax(name, kwargs, expected) -> None:
    charges = {m: [D(c) for c in cs] for m, cs in kwargs.pop("charges").items()}
    doc = build_document(charges, period_end=FEB, rounding_mode=None, **kwargs)
    assert doc.kind == expected["kind"], name
    assert doc.subtotal == D(expected["subtotal"]), name
    assert doc.credits_applied == D(expected["credits"]), name
    assert doc.tax == D(expected["tax"]), name
    assert doc.total == D(expected["total"]) == doc.subtotal - doc.credits_applied + doc.tax, name
