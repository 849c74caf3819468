"""Hostile data at the billing end (issue 14, items 5 and 9): one customer whose period sums do not
fit an invoice's columns must not stop the others' invoices, and customer ids that a spreadsheet
would run as formulas are neutralised in CSV exports."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

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
)

pytestmark = [pytest.mark.integration, pytest.mark.module_database]

W = datetime(2026, 1, 5, 10, tzinfo=UTC)
HOSTILE_IDS = ['=HYPERLINK("http://x","click")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "\tx", "\rx"]
PLAIN = [f"cust-{i}" for i in range(7)]


@pytest.fixture(scope="module")
def seed():
    """Seeds the one database the module's tests share."""

    def seed(c) -> None:
        seed_price_book(c, "usd", "USD")
        for cust in [*PLAIN, "huge", *HOSTILE_IDS]:
            seed_customer(c, cust, "usd", "USD")
        for cust in [*PLAIN, *HOSTILE_IDS]:
            add_usage(c, cust, "api_calls", W, [10], flat("0.10"))
        # each window fits numeric(38, 12); their period sum (1.2e26) does not fit the invoice line
        for h in range(2):
            add_usage(c, "huge", "api_calls", W + timedelta(hours=h), ["6e25"], flat("0.10"))

    return seed


def test_one_customer_whose_sums_overflow_an_invoice_does_not_stop_the_others(settings) -> None:
    env = cli_env(settings)
    r = subprocess.run([sys.executable, "-m", "cli.app", "invoice", "--period", "2026-01", "-q"],
                       capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr  # the operator must look: one customer failed
    assert "Traceback" not in r.stderr
    failed = [ln for ln in r.stderr.splitlines() if "not invoiced" in ln]
    assert len(failed) == 1 and "customer huge" in failed[0], r.stderr
    with connect(settings) as c:
        invoiced = {row[0] for row in c.execute(
            "SELECT customer_id FROM billing.invoices WHERE period_start = '2026-01-01'")}
        unlinked = c.execute("""SELECT count(*) FROM billing.rated_charges ch WHERE customer_id = 'huge'
                                   AND NOT EXISTS (SELECT 1 FROM billing.invoice_line_links k
                                                    WHERE k.charge_seq = ch.charge_seq)""").fetchone()[0]
    assert invoiced == set(PLAIN) | set(HOSTILE_IDS)
    assert unlinked == 2  # its charges wait for a fix, unlinked
    # the library reports it too, and a second run changes nothing for the others
    with connect(settings, autocommit=True) as c:
        res = run_invoicing(c, "2026-01")
    assert set(res.failed) == {"huge"} and res.drafts_built == 0


def test_csv_export_neutralises_formulas_and_keeps_numbers_numeric(settings, tmp_path) -> None:
    out = tmp_path / "inv.csv"
    with connect(settings, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM billing.invoices LIMIT 1").fetchone():
            run_invoicing(c, "2026-01")
        export_invoices(c, "2026-01", "csv", out)
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    ids = {r["customer_id"] for r in rows}
    assert ids == {*PLAIN, *("'" + h for h in HOSTILE_IDS)}
    for r in rows:
        for col in ("subtotal", "total", "tax", "amount", "amount_precise", "quantity"):
            Decimal(r[col])  # a number, never prefixed
