"""Benchmark of the analysts' queries (not a timed test): every ```sql block of docs/ANALYSTS.md,
run as ``meterflow_analyst`` with EXPLAIN ANALYZE on a database of ≥ 10M events / ≥ 1M windows.

    .venv/bin/python scripts/bench_analysts.py [--customers 700] [--per-window 10] [--keep]

It creates a scratch database (mf_test_<random>, dropped afterwards unless ``--keep``) and fills
it straight with SQL (generate_series, no Kafka, no Flink): December 2025 (history: one meter,
one event per hourly window) and January 2026 (two meters — ``api_calls`` sum, ``active_seats``
max — ``--per-window`` events per hourly window and customer), one revision per window and its
charge; invoices Dec and Jan issued with the real invoice job; then 5 % of January's windows get
a late event (revision 2, a late_revision charge) and Jan is invoiced again (corrections). Plus
dead letters, duplicate counts, rating errors and a reconciliation run. Customer 1 is ``acme``
(so the page's literals hit real data); ``'2026-000042'`` is replaced by acme's January invoice.

Each query runs three times (the first warms the cache); the report gives the best
``Execution Time`` of EXPLAIN ANALYZE and the plan's top node. Target (issue 19): < 100 ms for
the per-customer and per-invoice questions. Needs the local stack (scripts/stack.sh up).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from jobs.batch.invoicing import run_invoicing  # noqa: E402
from schemas.config import MeterSettings, load_settings  # noqa: E402
from sinks.db import connect  # noqa: E402
from sinks.meters import sync_meters  # noqa: E402

DOC = ROOT / "docs" / "ANALYSTS.md"
CALC = json.dumps({"aggregation": "sum", "model": "flat", "price_version": "v1",
                   "formula": "Rate(period) = Σ_w P_v(...) — a realistic-size explanation " + "x" * 300})
# per-customer / per-invoice questions: the < 100 ms target applies
PER_CUSTOMER = {"daily_usage", "usage_per_window", "documents", "invoice_lines", "customer_period",
                "invoice_charges", "line_events", "why_correction", "calculation", "duplicates",
                "credits", "charge_to_aggregate"}


def _cust(col: str) -> str:
    return f"CASE {col} WHEN 1 THEN 'acme' ELSE 'cust-' || lpad({col}::text, 5, '0') END"


def step(what: str, conn: psycopg.Connection, sql: str, params: object = None) -> None:
    t = time.perf_counter()
    cur = conn.execute(sql, params)
    print(f"  {what}: {cur.rowcount:,} rows in {time.perf_counter() - t:.1f}s", flush=True)


def load(conn: psycopg.Connection, n_cust: int, per: int) -> None:
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET maintenance_work_mem = '256MB'")
    conn.execute("SET work_mem = '256MB'")
    for cur in ("EUR", "USD"):
        conn.execute("INSERT INTO billing.price_books (price_book_id, currency) VALUES (%s, %s)",
                     (f"pb-{cur}", cur))
        conn.execute(
            """INSERT INTO billing.price_book_versions (price_book_id, version, effective_from,
                 rounding_mode, content, content_sha256)
               VALUES (%s, 'v1', '2020-01-01Z', 'ROUND_HALF_UP', '{}', repeat('0', 64))""", (f"pb-{cur}",))
    conn.execute("INSERT INTO billing.tax_rates (region, effective_from, rate) VALUES ('EU', '2020-01-01Z', 0.2)")
    conn.execute(
        f"""INSERT INTO billing.customers (customer_id, price_book_id, currency, tax_region)
            SELECT {_cust('g')}, CASE WHEN g %% 10 = 0 THEN 'pb-USD' ELSE 'pb-EUR' END,
                   CASE WHEN g %% 10 = 0 THEN 'USD' ELSE 'EUR' END, CASE WHEN g %% 2 = 1 THEN 'EU' END
              FROM generate_series(1, %s) g""", (n_cust,))
    conn.execute(
        f"""INSERT INTO billing.credits (credit_id, customer_id, currency, amount, granted_at)
            SELECT 'cr-' || g, {_cust('g')}, CASE WHEN g %% 10 = 0 THEN 'USD' ELSE 'EUR' END, 500,
                   timestamptz '2025-11-01Z' FROM generate_series(1, %s, 7) g
            UNION ALL SELECT 'cr-acme-usd', 'acme', 'USD', 50, timestamptz '2025-11-02Z'""", (n_cust,))
    # events: December (api_calls, 1 per window), January (2 meters, `per` per window); ids
    # ascending in time order, as the writer appends them
    step("usage_events Dec", conn, f"""
        INSERT INTO billing.usage_events (event_id, customer_id, meter, event_time, ingestion_time,
               quantity, properties, window_start, source, kafka_topic, kafka_partition, kafka_offset,
               counted_revision)
        SELECT 'd' || lpad((h * %(n)s + c)::text, 11, '0'), {_cust('c')}, 'api_calls',
               ws + interval '7 min', ws + interval '8 min', 1 + (h * 7 + c) %% 50, '{{"region":"eu"}}',
               ws, 'stream', 'usage-events', c %% 8, h * %(n)s + c, 1
          FROM generate_series(0, 743) h, generate_series(1, %(n)s) c,
               LATERAL (SELECT timestamptz '2025-12-01Z' + h * interval '1 hour' AS ws) w
         ORDER BY h, c""", {"n": n_cust})
    step("usage_events Jan", conn, f"""
        INSERT INTO billing.usage_events (event_id, customer_id, meter, event_time, ingestion_time,
               quantity, properties, window_start, source, kafka_topic, kafka_partition, kafka_offset,
               counted_revision)
        SELECT 'j' || lpad((((h * %(n)s + c) * 2 + m) * %(per)s + k)::text, 12, '0'), {_cust('c')},
               CASE m WHEN 0 THEN 'api_calls' ELSE 'active_seats' END,
               ws + k * interval '5 min', ws + k * interval '5 min' + interval '2 s',
               CASE m WHEN 0 THEN 1 + (h * 7 + c * 13 + k) %% 50 ELSE 1 + c %% 20 + (h + k) %% 5 END,
               '{{"region":"eu"}}', ws, 'stream', 'usage-events', c %% 8,
               ((h * %(n)s + c) * 2 + m) * %(per)s + k, 1
          FROM generate_series(0, 743) h, generate_series(1, %(n)s) c, generate_series(0, 1) m,
               generate_series(0, %(per)s - 1) k,
               LATERAL (SELECT timestamptz '2026-01-01Z' + h * interval '1 hour' AS ws) w
         ORDER BY h, c, m, k""", {"n": n_cust, "per": per})
    step("aggregated_usage", conn, """
        INSERT INTO billing.aggregated_usage (customer_id, meter, window_start, window_end, revision,
               quantity, event_count, qsum, qmax, source)
        SELECT customer_id, meter, window_start, window_start + interval '1 hour', 1,
               CASE meter WHEN 'active_seats' THEN max(quantity) ELSE sum(quantity) END, count(*),
               sum(quantity), max(quantity), 'window'
          FROM billing.usage_events GROUP BY customer_id, meter, window_start
         ORDER BY window_start, customer_id, meter""")
    step("rated_charges", conn, """
        INSERT INTO billing.rated_charges (charge_id, customer_id, meter, period_start, window_start,
               window_end, revision, currency, quantity_delta, amount, price_book_id, price_version,
               calculation, cause)
        SELECT gen_random_uuid(), a.customer_id, a.meter, a.period_start, a.window_start, a.window_end,
               1, cu.currency, a.quantity,
               CASE a.meter WHEN 'active_seats' THEN a.quantity * 0.01 ELSE a.quantity * 0.001 END,
               cu.price_book_id, 'v1', %s::jsonb, 'window_fired'
          FROM billing.aggregated_usage a JOIN billing.customers cu USING (customer_id)
         ORDER BY a.window_start, a.customer_id, a.meter""", (CALC,))


def late(conn: psycopg.Connection, n_cust: int) -> None:
    """5 % of January's api_calls windows: one late event each (revision 2, late_revision)."""
    step("late events", conn, f"""
        INSERT INTO billing.usage_events (event_id, customer_id, meter, event_time, ingestion_time,
               quantity, properties, window_start, source, kafka_topic, kafka_partition, kafka_offset,
               counted_revision, late_within)
        SELECT 'l' || lpad((h * %(n)s + c)::text, 11, '0'), {_cust('c')}, 'api_calls',
               ws + interval '59 min', ws + interval '2 hours', 7, NULL, ws, 'stream', 'usage-events',
               c %% 8, 10000000000 + h * %(n)s + c, 2, true
          FROM generate_series(0, 743) h, generate_series(1, %(n)s) c,
               LATERAL (SELECT timestamptz '2026-01-01Z' + h * interval '1 hour' AS ws) w
         WHERE (h * 31 + c) %% 20 = 0""", {"n": n_cust})
    step("late revisions", conn, """
        INSERT INTO billing.aggregated_usage (customer_id, meter, window_start, window_end, revision,
               quantity, event_count, qsum, qmax, source)
        SELECT a.customer_id, a.meter, a.window_start, a.window_end, 2, a.quantity + 7,
               a.event_count + 1, a.qsum + 7, greatest(a.qmax, 7), 'late_revision'
          FROM billing.usage_events e
          JOIN billing.aggregated_usage a ON a.customer_id = e.customer_id AND a.meter = e.meter
           AND a.window_start = e.window_start AND a.revision = 1
         WHERE e.event_id LIKE 'l%'""")
    step("late charges", conn, """
        INSERT INTO billing.rated_charges (charge_id, customer_id, meter, period_start, window_start,
               window_end, revision, currency, quantity_delta, amount, price_book_id, price_version,
               calculation, cause, caused_by)
        SELECT gen_random_uuid(), a.customer_id, a.meter, a.period_start, a.window_start, a.window_end,
               2, cu.currency, 7, 0.007, cu.price_book_id, 'v1', %s::jsonb, 'late_revision',
               'l' || a.window_start
          FROM billing.aggregated_usage a JOIN billing.customers cu USING (customer_id)
         WHERE a.revision = 2""", (CALC,))


def rejections(conn: psycopg.Connection, n_cust: int) -> None:
    step("dead letters", conn, f"""
        INSERT INTO billing.dead_letters (kafka_topic, kafka_partition, kafka_offset, reason, error,
               event_id, customer_id, meter, event_time, rejected_at, period_start, payload, payload_bytes)
        SELECT 'usage-events-dlq', 0, g, (ARRAY['invalid_quantity', 'unknown_meter', 'invalid_json',
               'invalid_event_time'])[1 + g %% 4], 'rejected', 'bad-' || g, {_cust('(1 + g %% %(n)s)')},
               'api_calls', t, t, date_trunc('month', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
               repeat('x', 200), 200
          FROM generate_series(1, 50000) g,
               LATERAL (SELECT timestamptz '2025-12-01Z' + g * interval '1 minute' AS t) w""",
         {"n": n_cust})
    step("duplicate counts", conn, """
        INSERT INTO billing.duplicate_counts (event_id, source, epoch_ms, duplicates)
        SELECT event_id, 'stream', 0, 1 FROM billing.usage_events TABLESAMPLE SYSTEM (1)""")
    step("rating errors", conn, """
        INSERT INTO billing.rating_errors (customer_id, meter, period_start, window_start, revision,
               error_code, message)
        SELECT 'ghost-' || g % 10, 'api_calls', '2026-01-01Z',
               timestamptz '2026-01-01Z' + g * interval '1 hour', 1, 'unknown_customer', 'no customer'
          FROM generate_series(0, 743) g""")
    conn.execute(
        """INSERT INTO billing.reconciliation_runs (period_start, period_end, started_at, ok,
             tolerance_minor_units, checks, mismatches, kafka_checked)
           VALUES ('2026-01-01Z', '2026-02-01Z', now(), true, 0, %s, '[]', true)""",
        (json.dumps([{"name": "a. input = accepted + duplicates + rejected", "status": "ok",
                      "detail": "", "numbers": {"input": 1, "accepted": 1, "duplicates": 0,
                                                "rejected": 0, "late_topic": 0}}]
                    + [{"name": f"{x}. check", "status": "ok", "detail": ""} for x in "bcdef"]),))


def doc_queries() -> dict[str, str]:
    out = {}
    for block in re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        m = re.match(r"-- q: (\w+)", block)
        if m and m.group(1) != "create_role":
            out[m.group(1)] = block
    return out


def time_queries(admin: psycopg.Connection, number: str, runs: int = 3) -> list[tuple[str, float, int, str]]:
    admin.execute("SET ROLE meterflow_analyst")
    out = []
    for name, sql in doc_queries().items():
        sql = sql.replace("'2026-000042'", f"'{number}'").strip().rstrip(";")
        best, rows, top = float("inf"), 0, ""
        for _ in range(runs):
            plan = admin.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).fetchone()[0][0]
            best = min(best, plan["Execution Time"])
            rows, top = plan["Plan"].get("Actual Rows", 0), plan["Plan"]["Node Type"]
        out.append((name, best, rows, top))
        kind = "per-customer/invoice" if name in PER_CUSTOMER else "period-wide"
        print(f"  {name:22s} {best:9.1f} ms  {rows:>7} rows  {kind}", flush=True)
    admin.execute("RESET ROLE")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=700)
    ap.add_argument("--per-window", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    a = ap.parse_args()
    from tests.integration.dbutil import admin_connect, fresh_database

    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
          flush=True)
    t0 = time.perf_counter()
    with fresh_database(load_settings(), keep=a.keep) as s:
        print(f"database {s.postgres.database}", flush=True)
        with connect(s, autocommit=True) as conn:
            sync_meters(conn, [MeterSettings(name="api_calls", aggregation="sum", unit="call"),
                               MeterSettings(name="active_seats", aggregation="max", unit="seat")])
            load(conn, a.customers, a.per_window)
            for p in ("2025-12", "2026-01"):
                r = run_invoicing(conn, p, issue=True, progress=False)
                print(f"  invoice {p}: {r.charges_invoiced:,} charges, {len(r.issued)} documents in "
                      f"{r.build_seconds + r.issue_seconds:.1f}s", flush=True)
            late(conn, a.customers)
            r = run_invoicing(conn, "2026-01", issue=True, progress=False)
            print(f"  invoice 2026-01 again: {r.charges_invoiced:,} charges, {r.documents}", flush=True)
            rejections(conn, a.customers)
            number = conn.execute(
                """SELECT invoice_number FROM billing.invoices WHERE customer_id = 'acme'
                     AND period_start = '2026-01-01Z' AND kind = 'standard'""").fetchone()[0]
        with admin_connect(s, autocommit=True) as admin:
            admin.execute("VACUUM ANALYZE")
            sizes = admin.execute(
                """SELECT (SELECT count(*) FROM billing.usage_events),
                          (SELECT count(*) FROM billing.aggregated_usage),
                          (SELECT count(DISTINCT (customer_id, meter, window_start)) FROM billing.aggregated_usage),
                          (SELECT count(*) FROM billing.rated_charges),
                          (SELECT count(*) FROM billing.invoices),
                          pg_size_pretty(pg_database_size(current_database()))""").fetchone()
            print(f"loaded in {time.perf_counter() - t0:.0f}s: {sizes[0]:,} events, {sizes[1]:,} window "
                  f"revisions ({sizes[2]:,} windows), {sizes[3]:,} charges, {sizes[4]:,} documents, "
                  f"{sizes[5]}; acme's January invoice {number}", flush=True)
            print(f"queries of docs/ANALYSTS.md as meterflow_analyst (best of 3, EXPLAIN ANALYZE; load "
                  f"{os.getloadavg()[0]:.1f}):", flush=True)
            res = time_queries(admin, number)
            slow = [n for n, ms, _, _ in res if n in PER_CUSTOMER and ms >= 100]
            print("per-customer/invoice queries over 100 ms: " + (", ".join(slow) or "none"), flush=True)


if __name__ == "__main__":
    main()
