"""Loading price books, customers and tax rates into a real PostgreSQL (fresh database per test)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from pricing import load_price_book
from pricing.reference import load_customers, load_tax_rates, tax_rates_from_data
from sinks.db import connect
from sinks.pricebook_store import (
    StoreConflictError,
    read_customer_price_book,
    read_price_book,
    store_customers,
    store_price_books,
    store_tax_rates,
)

ROOT = Path(__file__).resolve().parents[2]
USD = ROOT / "examples/pricebooks/standard-usd.toml"
JPY = ROOT / "examples/pricebooks/standard-jpy.json"


def counts(conn):
    return tuple(
        conn.execute(f"SELECT count(*) FROM billing.{t}").fetchone()[0]
        for t in ("price_books", "price_book_versions", "customers", "tax_rates")
    )


def test_loading_the_same_version_twice_is_a_no_op(settings):
    with connect(settings) as conn:
        first = store_price_books(conn, [load_price_book(USD)])
        assert [r.status for r in first] == ["inserted", "inserted", "inserted"]
        loaded_at = conn.execute("SELECT array_agg(loaded_at ORDER BY version) FROM "
                                 "billing.price_book_versions").fetchone()[0]
        again = store_price_books(conn, [load_price_book(USD)])
        assert [r.status for r in again] == ["unchanged", "unchanged", "unchanged"]
        assert counts(conn)[:2] == (1, 2)
        assert conn.execute("SELECT array_agg(loaded_at ORDER BY version) FROM "
                            "billing.price_book_versions").fetchone()[0] == loaded_at


def test_conflicting_content_under_a_loaded_version_is_an_error_naming_it(settings, tmp_path):
    changed = tmp_path / "usd.toml"
    changed.write_text(USD.read_text().replace('unit_price = "0.0002"', 'unit_price = "0.0003"'))
    # a new version in the same file must not be written either: one transaction
    changed.write_text(changed.read_text() + '''
[[versions]]
name = "2026-03"
effective_from = 2026-03-01T00:00:00Z
[[versions.prices]]
meter = "api_calls"
model = "flat"
unit_price = "0.01"
''')
    with connect(settings) as conn:
        store_price_books(conn, [load_price_book(USD)])
        with pytest.raises(StoreConflictError, match="'standard-usd' version '2026-01'.*different content"):
            store_price_books(conn, [load_price_book(changed)])
        assert counts(conn)[:2] == (1, 2)
        assert conn.execute("SELECT count(*) FROM billing.price_book_versions WHERE version = "
                            "'2026-03'").fetchone()[0] == 0


def test_a_reused_effective_from_or_changed_currency_is_an_error(settings, tmp_path):
    renamed = tmp_path / "usd.toml"
    renamed.write_text(USD.read_text().replace('name = "2026-01"', 'name = "january"'))
    eur = tmp_path / "eur.toml"
    eur.write_text(USD.read_text().replace('currency = "USD"', 'currency = "EUR"'))
    with connect(settings) as conn:
        store_price_books(conn, [load_price_book(USD)])
        with pytest.raises(StoreConflictError, match="already used by stored version '2026-01'"):
            store_price_books(conn, [load_price_book(renamed)])
        with pytest.raises(StoreConflictError, match="currency USD"):
            store_price_books(conn, [load_price_book(eur)])


def test_an_invalid_file_is_an_error_and_nothing_is_written(settings, tmp_path):
    bad = tmp_path / "bad.json"
    data = json.loads(JPY.read_text())
    data["versions"][0]["prices"][0]["tiers"].pop()  # no open-ended last tier
    bad.write_text(json.dumps(data))
    import os

    cli = str(Path(sys.executable).parent / "meterflow")
    env = dict(os.environ, METERFLOW__POSTGRES__DATABASE=settings.postgres.database)
    proc = subprocess.run([cli, "pricebook", "load", str(JPY), str(bad)], capture_output=True,
                          text=True, env=env, cwd=ROOT, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "last tier must be open-ended" in proc.stderr
    with connect(settings) as conn:
        assert counts(conn) == (0, 0, 0, 0)  # the valid JPY file was not written either


def test_the_cli_loads_all_example_files_and_reads_books_back(settings):
    import os

    env = dict(os.environ)
    env["METERFLOW__POSTGRES__DATABASE"] = settings.postgres.database
    cli = str(Path(sys.executable).parent / "meterflow")
    for args in (["pricebook", "load", str(USD), str(JPY)],
                 ["customers", "load", str(ROOT / "examples/customers.toml")],
                 ["taxes", "load", str(ROOT / "examples/taxes.toml")]):
        proc = subprocess.run([cli, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    with connect(settings) as conn:
        assert counts(conn) == (2, 3, 3, 3)
        book = read_customer_price_book(conn, "acme")
        # read back from the canonical content: same prices (decimal scale may differ: 0.1 vs 0.10)
        assert book.price_book_id == "standard-usd" and book.currency == "USD"
        assert [v.sha256() for v in book.versions] == [v.sha256() for v in load_price_book(USD).versions]
        assert read_price_book(conn, "standard-jpy").currency == "JPY"


def test_customers_and_taxes_load_idempotently_and_reject_conflicts(settings):
    with connect(settings) as conn:
        store_price_books(conn, [load_price_book(USD), load_price_book(JPY)])
        customers = load_customers(ROOT / "examples/customers.toml")
        assert {r.status for r in store_customers(conn, customers)} == {"inserted"}
        assert {r.status for r in store_customers(conn, customers)} == {"unchanged"}
        moved = [customers[0].model_copy(update={"tax_region": "US-NY"})]
        assert [r.status for r in store_customers(conn, moved)] == ["updated"]
        wrong = [customers[0].model_copy(update={"currency": "JPY"})]
        with pytest.raises(StoreConflictError, match="differs from price book"):
            store_customers(conn, wrong)
        rates = load_tax_rates(ROOT / "examples/taxes.toml")
        assert {r.status for r in store_tax_rates(conn, rates)} == {"inserted"}
        assert {r.status for r in store_tax_rates(conn, rates)} == {"unchanged"}
        changed = tax_rates_from_data({"tax_rates": [
            {"region": "US-CA", "effective_from": "2025-01-01T00:00:00Z", "rate": "0.08"}]})
        with pytest.raises(StoreConflictError, match="US-CA@2025-01-01T00:00:00Z is stored as"):
            store_tax_rates(conn, changed)
        assert conn.execute("SELECT rate FROM billing.tax_rates WHERE region = 'US-CA'").fetchone()[0] \
            == D("0.0725")
