"""Benchmark of the invoice run (not a timed test): rated charges per second.

    .venv/bin/python scripts/bench_invoicing.py [--charges 1000000 4000000] [--customers 10000]
                                                [--order customer|time]

For each size it creates a scratch database (mf_bench_<random>, dropped afterwards), loads
synthetic rated charges with COPY (~10k customers, 3 meters, hourly windows in January 2026),
then times ``run_invoicing(period, issue=True)``: the build (lines, credits, tax, charge links)
and the issue (gapless numbers). Prints charges/s and the 1-minute load average before and after
the timed run (the development machine is shared). ``--order time`` writes the charges window by
window, as the streaming rater does (the default, customer by customer, is what earlier figures
used). Needs the local stack (scripts/stack.sh up).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from jobs.batch.invoicing import run_invoicing
from schemas.config import load_settings
from sinks.db import connect

JAN = datetime(2026, 1, 1, tzinfo=UTC)
METERS = ("api_calls", "storage_gb_hours", "active_seats")


def load(conn: psycopg.Connection, n_charges: int, n_customers: int,
         order: str = "customer") -> None:
    """Customers, price book, tax, credits, and ``n_charges`` rated charges in January 2026.

    ``order`` is the order the charges are written in (their physical order and charge_seq):
    ``customer`` — all charges of one customer, then the next; ``time`` — window by window,
    every customer in each window, as a streaming rater writes them.
    """
    conn.execute("INSERT INTO billing.price_books (price_book_id, currency) VALUES ('pb', 'USD')")
    conn.execute(
        """INSERT INTO billing.price_book_versions (price_book_id, version, effective_from,
             rounding_mode, content, content_sha256)
           VALUES ('pb', 'v1', '2020-01-01Z', 'ROUND_HALF_UP', '{}', repeat('0', 64))""")
    conn.execute("INSERT INTO billing.tax_rates (region, effective_from, rate) "
                 "VALUES ('EU', '2020-01-01Z', 0.19)")
    conn.execute(
        """INSERT INTO billing.customers (customer_id, price_book_id, currency, tax_region)
           SELECT 'cust-' || lpad(g::text, 6, '0'), 'pb', 'USD', CASE WHEN g %% 2 = 0 THEN 'EU' END
             FROM generate_series(1, %s) g""", (n_customers,))
    conn.execute(
        """INSERT INTO billing.credits (credit_id, customer_id, currency, amount, granted_at)
           SELECT 'cr-' || g, 'cust-' || lpad(g::text, 6, '0'), 'USD', 25, '2025-12-01Z'
             FROM generate_series(1, %s, 7) g""", (n_customers,))
    per_cust = n_charges // n_customers
    t0 = time.perf_counter()
    calc = '{"model": "tiered", "formula": "P(c+q) - P(c)"}'
    with conn.cursor().copy(
        """COPY billing.rated_charges (charge_id, customer_id, meter, period_start, window_start,
             window_end, revision, currency, quantity_delta, amount, price_book_id, price_version,
             calculation, cause) FROM STDIN"""
    ) as cp:
        rnd = secrets.SystemRandom()
        written = 0
        extra = n_charges - per_cust * n_customers  # customers 1..extra have one more charge
        if order == "customer":
            pairs = ((c, i) for c in range(1, n_customers + 1)
                     for i in range(per_cust + (c <= extra)))
        else:
            pairs = ((c, i) for i in range(per_cust + (extra > 0))
                     for c in range(1, n_customers + 1) if i < per_cust or c <= extra)
        for c, i in pairs:
            cust = f"cust-{c:06d}"
            meter = METERS[i % 3]
            ws = JAN + timedelta(hours=i // 3 % 744)
            q = rnd.randint(1, 5000)
            v = q * 123456789  # q x 0.0123456789, exact: integer arithmetic, no float
            amt = f"{v // 10**10}.{v % 10**10:010d}"
            cp.write_row((uuid.uuid4(), cust, meter, JAN, ws, ws + timedelta(hours=1),
                          1 + i // 2232, "USD", q, amt, "pb", "v1", calc, "window_fired"))
            written += 1
    conn.execute("ANALYZE billing.rated_charges")
    print(f"  loaded {written:,} charges with COPY in {time.perf_counter() - t0:.1f}s",
          flush=True)


def _loadavg() -> str:
    """The 1-minute load average (the machine may be shared: report it with every figure)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def bench(n_charges: int, n_customers: int, order: str = "customer") -> dict:
    from tests.integration.dbutil import admin_connect, fresh_database

    # a fresh database, created and migrated by the superuser; the bench works as the app role
    with fresh_database(load_settings()) as s, connect(s, autocommit=True) as conn:
        with conn.transaction():
            load(conn, n_charges, n_customers, order)
        with admin_connect(s, autocommit=True) as admin:
            admin.execute("CHECKPOINT")
        load_before = _loadavg()
        res = run_invoicing(conn, "2026-01", issue=True, progress=False)
        load_after = _loadavg()
        rerun = run_invoicing(conn, "2026-01", issue=True, progress=False)
    total = res.build_seconds + res.issue_seconds
    out = {
        "charges": res.charges_invoiced,
        "invoices": len(res.issued),
        "build_s": res.build_seconds,
        "issue_s": res.issue_seconds,
        "charges_per_s": res.charges_invoiced / total,
        "rerun_s": rerun.build_seconds + rerun.issue_seconds,
        "load": (load_before, load_after),
    }
    print(f"  {out['charges']:,} charges -> {out['invoices']:,} invoices: build "
          f"{out['build_s']:.1f}s + issue {out['issue_s']:.1f}s = "
          f"{out['charges_per_s']:,.0f} charges/s; idempotent re-run {out['rerun_s']:.2f}s; "
          f"1-min load average {load_before} -> {load_after}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--charges", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--order", choices=("customer", "time"), default="customer",
                    help="order the charges are written in (default: customer by customer)")
    a = ap.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs", flush=True)
    for n in a.charges:
        print(f"{n:,} charges, {a.customers:,} customers, written in {a.order} order", flush=True)
        bench(n, a.customers, a.order)


if __name__ == "__main__":
    main()
