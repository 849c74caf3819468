"""The analysts' views of V009 on data the ledger writer made (issue 19): each accepted event
records the revision that counted it (so "which events made this charge" is an exact join) and
whether it came late within allowed lateness; the meters' aggregation is in Postgres; a max
meter's lines bill the peak; the views' filters reach the indexes."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest

from jobs.batch.invoicing import run_invoicing
from jobs.consumers.rerating import apply_late_batch
from schemas.config import MeterSettings
from schemas.records import LedgerEvent
from sinks.db import connect
from sinks.ledger import apply_batch
from sinks.meters import sync_meters
from sinks.pricebook_store import PriceBooks
from tests.integration.dbutil import fresh_database
from tests.integration.test_ledger import AGG, BOOK, NOV, H, Offsets, ev, fire, firing, late, seed_prices

pytestmark = pytest.mark.integration

D = Decimal


@pytest.fixture(scope="module")
def settings():
    with fresh_database() as s:
        with connect(s) as conn:
            seed_prices(conn, BOOK, customers=["c1", "c2", "c3"])
        yield s


def counted(conn, customer: str) -> dict[str, tuple[int | None, bool]]:
    return {e: (r, a == "late_within") for e, r, a in conn.execute(
        "SELECT event_id, counted_revision, arrival FROM v_usage_events WHERE customer_id = %s",
        (customer,))}


def test_each_event_records_the_revision_that_counted_it(settings) -> None:
    off = Offsets()
    ws, ws2 = NOV, NOV + H
    with connect(settings) as conn:
        books = PriceBooks()

        def apply(items):
            return apply_batch(conn, off.batch(items), consumer="views", books=books, aggregations=AGG)

        # a late event read before its window's firing, in the same batch (Flink's order)
        on1, on2 = ev("c1", "api_calls", ws, "6", event_id="on-1"), ev("c1", "api_calls", ws, "4", event_id="on-2")
        apply([late("c1", "api_calls", ws, "3", "late-a"), on1, on2, firing("c1", "api_calls", ws, [on1, on2]),
               late("c1", "api_calls", ws, "4", "late-b")])
        # only a late event so far: Flink fires the window at once; its on-time event counts there
        ws3 = NOV + 5 * H
        on3 = ev("c1", "api_calls", ws3, "1", event_id="on-3")
        apply([on3, late("c1", "api_calls", ws3, "2", "late-c")])
        apply([firing("c1", "api_calls", ws3, [on3])])
        # an event of a window that has not fired yet: not counted
        apply([ev("c1", "api_calls", ws2, "1", event_id="waiting")])
        assert counted(conn, "c1")["waiting"] == (None, False)
        apply(fire("c1", "api_calls", ws2 + H, "2"))
        apply([firing("c1", "api_calls", ws2, [ev("c1", "api_calls", ws2, "1")])])
        # an event beyond allowed lateness, folded in by the re-rating job
        too_late = LedgerEvent("too-late", "c1", "api_calls", ws + timedelta(minutes=5), D("5"), None,
                               ws, ws + 48 * H, "late", "usage-events-late", 0, 1, "late", ws + H)
        apply_late_batch(conn, [too_late], consumer="views-late", books=books, aggregations=AGG,
                         window_size=H)
        conn.commit()

        c = counted(conn, "c1")
        assert c["on-1"] == c["on-2"] == (1, False)
        assert c["late-a"] == (2, True) and c["late-b"] == (3, True)
        assert c["waiting"] == (1, False)
        assert c["too-late"] == (4, False)
        assert c["on-3"] == (1, False) and c["late-c"] == (1, True)
        # the writer updated only the events counted after a window's first revision (and the
        # late-within ones): the first firing's events are not written twice
        updated = dict(conn.execute("SELECT event_id, counted_revision FROM usage_events "
                                    "WHERE customer_id = 'c1' AND counted_revision IS NOT NULL").fetchall())
        assert updated == {"late-a": 2, "late-b": 3, "too-late": 4, "late-c": 1}
        # every charge lists exactly the events its revision counted
        per_charge = {(str(w), r, cause): sorted(ids) for w, r, cause, ids in conn.execute(
            """SELECT window_start, revision, cause, event_ids FROM v_charges
                WHERE customer_id = 'c1' AND window_start = %s""", (ws,))}
        assert per_charge == {
            (str(ws), 1, "window_fired"): ["on-1", "on-2"],
            (str(ws), 2, "late_revision"): ["late-a"],
            (str(ws), 3, "late_revision"): ["late-b"],
            (str(ws), 4, "late_event"): ["too-late"],
        }
        arrivals = dict(conn.execute(
            "SELECT event_id, arrival FROM v_charge_events WHERE customer_id = 'c1' AND window_start = %s",
            (ws,)).fetchall())
        assert arrivals == {"on-1": "on_time", "on-2": "on_time", "late-a": "late_within",
                            "late-b": "late_within", "too-late": "late"}


def test_an_event_once_counted_cannot_be_changed(settings) -> None:
    import psycopg

    from tests.integration.dbutil import admin_connect

    with connect(settings) as conn:  # the app may set a revision once, nothing else
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("UPDATE usage_events SET counted_revision = 7 WHERE event_id = 'late-a'")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE usage_events SET quantity = 0 WHERE event_id = 'late-a'")
    with admin_connect(settings) as conn:  # and the trigger holds even for the owner
        for change in ("quantity = 0", "counted_revision = NULL", "late_within = false",
                       "counted_revision = 1, quantity = 0"):
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute(f"UPDATE usage_events SET {change} WHERE event_id = 'late-a'")
            conn.rollback()
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("DELETE FROM usage_events WHERE event_id = 'late-a'")


def test_meters_follow_the_configuration_and_max_lines_bill_the_peak(settings) -> None:
    off = Offsets()
    with connect(settings) as conn:
        sync_meters(conn, [MeterSettings(name="api_calls", aggregation="sum", unit="call"),
                           MeterSettings(name="active_seats", aggregation="max", unit="seat"),
                           MeterSettings(name="gone", aggregation="count")])
        sync_meters(conn, [MeterSettings(name="api_calls", aggregation="sum", unit="request"),
                           MeterSettings(name="active_seats", aggregation="max", unit="seat")])
        assert conn.execute("SELECT meter, aggregation, unit, configured FROM meters ORDER BY meter"
                            ).fetchall() == [("active_seats", "max", "seat", True),
                                             ("api_calls", "sum", "request", True),
                                             ("gone", "count", None, False)]
        books = PriceBooks()
        # seats: peaks 10, 8, 12 (a later window), 12 again: billed 12 seats, not 42
        for h, q in enumerate(["10", "8", "12", "12"]):
            apply_batch(conn, off.batch(fire("c2", "active_seats", NOV + h * H, q)), consumer="seats",
                        books=books, aggregations=AGG)
        conn.commit()
    with connect(settings, autocommit=True) as conn:
        run_invoicing(conn, "2026-11", ["c2"], issue=True)
        line = conn.execute(
            """SELECT aggregation, unit, quantity, billed_quantity, amount FROM v_invoice_lines
                WHERE customer_id = 'c2'""").fetchone()
        assert line == ("max", "seat", D("42"), D("12"), D("60.00"))  # 12 seats × 5
        # windows: Σ billed quantity over the period = the peak; Σ quantity = Σ window peaks
        q, billed = conn.execute(
            """SELECT sum(quantity), sum(billed_quantity) FROM v_window_charges
                WHERE customer_id = 'c2' AND period_start = '2026-11-01Z'""").fetchone()
        assert (q, billed) == (D("42"), D("12"))
        # daily usage done right: per the meter's aggregation
        day = conn.execute(
            """SELECT CASE m.aggregation WHEN 'max' THEN max(u.quantity) ELSE sum(u.quantity) END
                 FROM v_current_usage u JOIN meters m USING (meter)
                WHERE u.customer_id = 'c2' AND u.period_start = '2026-11-01Z'
                GROUP BY m.aggregation""").fetchone()[0]
        assert day == D("12")


def _plan(conn, query: str) -> str:
    return json.dumps(conn.execute("EXPLAIN (FORMAT JSON) " + query).fetchone()[0])


def test_filters_reach_the_tables(settings) -> None:
    """A period filter on v_current_usage is applied below DISTINCT ON (on aggregated_usage), and
    the drill-down by invoice number reads the line's links by line_id, not every link."""
    with connect(settings) as conn:
        conn.execute("SET enable_seqscan = off")  # tiny tables: show what the indexes allow
        plan = json.loads(_plan(conn, "SELECT * FROM v_current_usage WHERE customer_id = 'c2' "
                                      "AND period_start = '2026-11-01Z'"))

        def nodes(n):
            yield n
            for k in n.get("Plans", []):
                yield from nodes(k)

        scans = [n for n in nodes(plan[0]["Plan"]) if n.get("Relation Name") == "aggregated_usage"]
        assert scans and all("period_start" in (n.get("Index Cond", "") + n.get("Filter", ""))
                             for n in scans)
        assert scans[0].get("Index Name") == "aggregated_usage_period_idx"
        plan = json.loads(_plan(conn, "SELECT event_id FROM v_invoice_line_events "
                                      "WHERE invoice_number = '2026-000001'"))
        links = [n for n in nodes(plan[0]["Plan"]) if n.get("Relation Name") == "invoice_line_links"]
        assert links and all("line_id" in n.get("Index Cond", n.get("Recheck Cond", "")) for n in links)


def test_db_migrate_and_the_ledger_writer_sync_the_configured_meters(settings) -> None:
    import subprocess
    import sys

    from jobs.flink.run import _sync_meters
    from tests.integration.dbutil import REPO_ROOT, admin_connect, cli_env

    with admin_connect(settings) as conn:
        conn.execute("DELETE FROM billing.meters")
        conn.commit()
    r = subprocess.run([sys.executable, "-m", "cli.app", "db", "migrate"], cwd=REPO_ROOT,
                       env={**cli_env(settings), "PYTHONPATH": str(REPO_ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    want = sorted((m.name, m.aggregation.value, m.unit) for m in settings.meters)
    assert want
    with connect(settings) as conn:
        assert conn.execute("SELECT meter, aggregation, unit FROM meters WHERE configured ORDER BY 1"
                            ).fetchall() == want
        conn.execute("UPDATE meters SET unit = 'stale'")
        conn.commit()
    _sync_meters(settings)  # what the ledger writer does at start
    with connect(settings) as conn:
        assert conn.execute("SELECT meter, aggregation, unit FROM meters WHERE configured ORDER BY 1"
                            ).fetchall() == want
