"""Exports of invoices with their lines: CSV, JSON and Parquet carry the same exact numbers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from jobs.batch.export import export_invoices
from jobs.batch.invoicing import run_invoicing
from sinks.db import connect
from tests.integration.dbutil import (
    add_usage,
    cli_env,
    flat,
    seed_customer,
    seed_price_book,
    tiered,
)

pytestmark = [pytest.mark.integration, pytest.mark.module_database]

D = Decimal
W = datetime(2026, 1, 5, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
def seed():
    """Seeds the one database the module's tests share."""

    def seed(c) -> None:
        seed_price_book(c, "usd", "USD")
        seed_price_book(c, "jpy", "JPY")
        seed_customer(c, "us", "usd", "USD")
        seed_customer(c, "jp", "jpy", "JPY")
        for h, q in enumerate([400, 500, 334]):
            add_usage(c, "us", "api_calls", W + timedelta(hours=h), [q],
                      tiered((1000, "0.10"), (None, "0.08")))
        add_usage(c, "us", "storage_gb_hours", W, ["12.5"], flat("0.02"))
        add_usage(c, "jp", "api_calls", W, [1234], flat("0.37"), currency="JPY", price_book_id="jpy")
        run_invoicing(c, "2026-01", issue=True)
        add_usage(c, "us", "api_calls", W, [10], tiered((1000, "0.10"), (None, "0.08")))
        run_invoicing(c, "2026-01")  # a draft correction

    return seed


# (format, status filter, expected (invoices, lines))
CASES = [
    ("csv", "all", (3, 4)),      # us standard (2 lines) + jp standard + us correction draft
    ("json", "issued", (2, 3)),  # only the issued ones
    ("parquet", "draft", (1, 1)),
]


@pytest.mark.parametrize(("fmt", "status", "counts"), CASES)
def test_export_writes_invoices_with_their_lines(settings, tmp_path, fmt, status, counts):
    out = tmp_path / f"inv.{fmt}"
    with connect(settings, autocommit=True) as c:
        assert export_invoices(c, "2026-01", fmt, out, status=status) == counts
    if fmt == "csv":
        rows = list(csv.DictReader(out.open()))
        by = {(r["customer_id"], r["kind"], r["meter"]): r for r in rows}
        assert by[("us", "standard", "api_calls")]["amount"] == "118.72"
        assert by[("us", "standard", "api_calls")]["subtotal"] == "118.97"
        assert by[("jp", "standard", "api_calls")]["amount"] == "457"
        assert by[("us", "correction", "api_calls")]["invoice_number"] == ""
    elif fmt == "json":
        docs = json.loads(out.read_text())
        us = next(d for d in docs if d["customer_id"] == "us")
        assert us["total"] == "118.97" and us["status"] == "issued"
        assert [ln["meter"] for ln in us["lines"]] == ["api_calls", "storage_gb_hours"]
        assert us["lines"][1]["amount_precise"] == "0.250000000000000000"
    else:
        t = pq.read_table(out).to_pylist()
        assert t[0]["kind"] == "correction" and t[0]["amount"] == D("0.80")
        assert t[0]["corrects_invoice_number"].endswith("-000002") or t[0][
            "corrects_invoice_number"].endswith("-000001")


def test_export_cli_writes_the_default_file_name(settings, tmp_path):
    env = cli_env(settings)
    r = subprocess.run([sys.executable, "-m", "cli.app", "export", "invoices", "--period",
                        "2026-01", "--format", "json", "-q"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "invoices-2026-01.json").read_text())) == 3
