"""``meterflow credits grant|list`` end to end: idempotent by reference, and every bad input one
clear line with nothing written (the rows the invoice run reads, sinks/credits_store.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sinks.db import connect
from tests.e2e.cli_util import assert_one_clear_line, env_for, mf
from tests.integration.dbutil import fresh_database


@pytest.fixture(scope="module")
def seeded():
    """A migrated database with the example price books and customers (acme: USD, kaisha: JPY),
    loaded through the CLI."""
    with fresh_database() as s:
        env = env_for(s)
        for args in (
            (
                "pricebook",
                "load",
                "examples/pricebooks/standard-usd.toml",
                "examples/pricebooks/standard-jpy.json",
            ),
            ("customers", "load", "examples/customers.toml"),
        ):
            r = mf(env, *args)
            assert r.returncode == 0, r.stderr
        yield s, env


def credit_rows(settings) -> list[tuple]:
    with connect(settings) as conn:
        return conn.execute(
            "SELECT credit_id, customer_id, currency, amount, description "
            "FROM billing.credits ORDER BY credit_id"
        ).fetchall()


def test_grant_is_idempotent_by_reference_and_list_shows_the_balance(seeded) -> None:
    s, env = seeded
    grant = (
        "credits",
        "grant",
        "--customer",
        "acme",
        "--amount",
        "25.50",
        "--currency",
        "USD",
        "--reason",
        "goodwill",
        "--reference",
        "ticket-1",
    )
    first = mf(env, *grant)
    assert first.returncode == 0, first.stderr
    assert "ticket-1" in first.stdout and "granted" in first.stdout
    again = mf(env, *grant)
    assert again.returncode == 0, again.stderr
    assert "exists already" in again.stdout
    rows = [r for r in credit_rows(s) if r[0] == "ticket-1"]
    assert rows == [("ticket-1", "acme", "USD", Decimal("25.500000"), "goodwill")]

    listed = mf(env, "credits", "list", "--customer", "acme")
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if "ticket-1" in ln)
    assert "25.500000" in line and "goodwill" in line  # amount, applied 0, remaining = amount
    assert line.count("25.500000") == 2


def test_the_same_reference_for_a_different_credit_is_refused(seeded) -> None:
    s, env = seeded
    assert (
        mf(
            env,
            "credits",
            "grant",
            "--customer",
            "acme",
            "--amount",
            "10",
            "--currency",
            "USD",
            "--reference",
            "ticket-2",
        ).returncode
        == 0
    )
    before = credit_rows(s)
    r = mf(
        env,
        "credits",
        "grant",
        "--customer",
        "acme",
        "--amount",
        "11",
        "--currency",
        "USD",
        "--reference",
        "ticket-2",
    )
    assert_one_clear_line(r, "ticket-2", "amount 10 (asked 11)")
    assert credit_rows(s) == before


def test_without_a_reference_each_grant_is_a_new_credit(seeded) -> None:
    s, env = seeded
    before = len(credit_rows(s))
    for _ in range(2):
        r = mf(
            env, "credits", "grant", "--customer", "kaisha", "--amount", "500", "--currency", "JPY"
        )
        assert r.returncode == 0, r.stderr
    assert len(credit_rows(s)) == before + 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ("--customer", "nobody", "--amount", "5", "--currency", "USD"),
            "unknown customer 'nobody'",
        ),
        (("--customer", "acme", "--amount", "5", "--currency", "EUR"), "billed in USD, not EUR"),
        (("--customer", "acme", "--amount", "-5", "--currency", "USD"), "must be positive"),
        (("--customer", "acme", "--amount", "0", "--currency", "USD"), "must be positive"),
        (("--customer", "acme", "--amount", "ten", "--currency", "USD"), "not a decimal number"),
        (("--customer", "acme", "--amount", "NaN", "--currency", "USD"), "not finite"),
        (
            ("--customer", "acme", "--amount", "1.005", "--currency", "USD"),
            "more decimals than USD's 2",
        ),
        (
            ("--customer", "kaisha", "--amount", "1.5", "--currency", "JPY"),
            "more decimals than JPY's 0",
        ),
        (("--customer", "acme", "--amount", "1e20", "--currency", "USD"), "too large"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(seeded, args, needle) -> None:
    s, env = seeded
    before = credit_rows(s)
    r = mf(env, "credits", "grant", *args, "--reference", "bad-input")
    assert_one_clear_line(r, needle)
    assert credit_rows(s) == before


def test_list_of_an_unknown_customer_is_an_error_not_an_empty_list(seeded) -> None:
    _, env = seeded
    assert_one_clear_line(
        mf(env, "credits", "list", "--customer", "nobody"), "unknown customer 'nobody'"
    )
