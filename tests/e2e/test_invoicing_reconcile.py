"""Reconciliation on real PostgreSQL (and Kafka for the conservation check)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from jobs.batch.invoicing import run_invoicing
from jobs.batch.reconcile import run_reconcile
from schemas.config import load_settings
from sinks.db import connect
from tests.integration.dbutil import (
    add_usage,
    admin_connect,
    cli_env,
    flat,
    seed_customer,
    seed_price_book,
    tiered,
)

pytestmark = pytest.mark.integration

D = Decimal
JAN = datetime(2026, 1, 1, tzinfo=UTC)
W = JAN + timedelta(days=4, hours=10)
TIERED = tiered((1000, "0.10"), (None, "0.08"))


@pytest.fixture()
def invoiced_january(conn) -> None:
    """A clean, fully invoiced January: two customers, two meters, a late revision, a correction."""
    c = conn
    seed_price_book(c, "pb", "USD")
    for cust in ("alpha", "beta"):
        seed_customer(c, cust, "pb", "USD")
        for h, q in enumerate([400, 500, 334]):
            add_usage(c, cust, "api_calls", W + timedelta(hours=h), [q, 1], TIERED)
        add_usage(c, cust, "storage_gb_hours", W, ["0.333", "1.5"], flat("0.0123"))
    run_invoicing(c, "2026-01", issue=True)
    add_usage(c, "alpha", "api_calls", W, [17], TIERED)  # late: a correction invoice
    run_invoicing(c, "2026-01", issue=True)


def _keys(rep):
    return {(m.check[0], m.customer_id, m.meter) for m in rep.mismatches}


@pytest.mark.usefixtures("invoiced_january")
def test_reconcile_passes_on_a_clean_period_and_records_the_run(settings, conn):
    rep = run_reconcile(conn, settings, "2026-01", use_kafka=False)
    assert rep.ok, rep.mismatches
    # a (Kafka) skipped; b-h ok (g: payments, V010; h: provisional spend, V011)
    assert [c.status for c in rep.checks] == ["skipped", "ok", "ok", "ok", "ok", "ok", "ok", "ok"]
    row = conn.execute(
        "SELECT ok, kafka_checked, jsonb_array_length(checks), mismatches FROM "
        "billing.reconciliation_runs WHERE run_id = %s", (rep.run_id,)).fetchone()
    assert row == (True, False, 8, [])


def _superuser_tamper(conn, sql: str, table: str = "rated_charges") -> None:
    """As a superuser: the app role of ``conn`` can neither disable the triggers nor update."""
    s = load_settings()
    s = s.model_copy(update={"postgres": s.postgres.model_copy(update={"database": conn.info.dbname})})
    with admin_connect(s, autocommit=True) as su, su.transaction():
        su.execute(f"ALTER TABLE billing.{table} DISABLE TRIGGER USER")
        su.execute(sql)
        su.execute(f"ALTER TABLE billing.{table} ENABLE TRIGGER USER")


@pytest.mark.parametrize(
    ("table", "tamper", "expected"),
    [
        # a charge's amount edited in place: invoice lines no longer sum their charges
        ("rated_charges",
         "UPDATE billing.rated_charges SET amount = amount + 0.5 WHERE charge_id = (SELECT charge_id "
         "FROM billing.rated_charges WHERE customer_id = 'beta' AND meter = 'api_calls' LIMIT 1)",
         {("d", "beta", "api_calls")}),
        # a charge's quantity edited: windows and rated quantities disagree
        ("rated_charges",
         "UPDATE billing.rated_charges SET quantity_delta = quantity_delta + 1 WHERE charge_id = "
         "(SELECT charge_id FROM billing.rated_charges WHERE customer_id = 'alpha' "
         "AND meter = 'storage_gb_hours' LIMIT 1)",
         {("c", "alpha", "storage_gb_hours")}),
        # a window revision's quantity edited: accepted events and windows disagree (and rating)
        ("aggregated_usage",
         "UPDATE billing.aggregated_usage SET quantity = quantity + 3 WHERE customer_id = 'beta' "
         "AND meter = 'storage_gb_hours'",
         {("b", "beta", "storage_gb_hours"), ("c", "beta", "storage_gb_hours")}),
        # a raw event deleted: accepted quantities and windows disagree
        ("usage_events",
         "DELETE FROM billing.usage_events WHERE event_id = (SELECT event_id FROM "
         "billing.usage_events WHERE customer_id = 'alpha' AND meter = 'api_calls' LIMIT 1)",
         {("b", "alpha", "api_calls")}),
    ],
)
@pytest.mark.usefixtures("invoiced_january")
def test_reconcile_fails_naming_the_key_after_superuser_tampering(settings, conn, table, tamper,
                                                                   expected):
    _superuser_tamper(conn, tamper, table)
    rep = run_reconcile(conn, settings, "2026-01", use_kafka=False)
    assert not rep.ok
    assert _keys(rep) == expected
    stored = conn.execute(
        "SELECT ok, mismatches FROM billing.reconciliation_runs WHERE run_id = %s",
        (rep.run_id,)).fetchone()
    assert stored[0] is False
    assert {(m["customer_id"], m["meter"]) for m in stored[1]} == {k[1:] for k in expected}


@pytest.mark.parametrize(
    "tamper",
    [
        # one of alpha's storage charges re-linked to beta's storage line
        """UPDATE billing.invoice_line_links k SET line_id = b.line_id, invoice_id = b.invoice_id
             FROM billing.invoice_lines b
            WHERE b.customer_id = 'beta' AND b.meter = 'storage_gb_hours'
              AND k.charge_seq = (SELECT charge_seq FROM billing.rated_charges
                                   WHERE customer_id = 'alpha' AND meter = 'storage_gb_hours'
                                   LIMIT 1)""",
        # one of alpha's storage charges un-linked
        """DELETE FROM billing.invoice_line_links WHERE charge_seq = (SELECT charge_seq
             FROM billing.rated_charges WHERE customer_id = 'alpha'
              AND meter = 'storage_gb_hours' LIMIT 1)""",
    ],
)
@pytest.mark.usefixtures("invoiced_january")
def test_reconcile_names_the_key_of_a_tampered_charge_link(settings, conn, tamper):
    _superuser_tamper(conn, tamper, "invoice_line_links")
    rep = run_reconcile(conn, settings, "2026-01", use_kafka=False)
    assert not rep.ok
    assert ("e", "alpha", "storage_gb_hours") in _keys(rep)
    assert {k[1:] for k in _keys(rep)} == {("alpha", "storage_gb_hours")}


@pytest.mark.usefixtures("invoiced_january")
def test_reconcile_flags_a_rogue_charge_left_out_of_an_invoiced_period(settings, conn):
    conn.execute(
        """INSERT INTO billing.rated_charges (charge_id, customer_id, meter, period_start,
             window_start, window_end, revision, currency, quantity_delta, amount, price_book_id,
             price_version, calculation, cause)
           VALUES (%s, 'beta', 'api_calls', %s, %s, %s, 9, 'USD', 5, 0.4, 'pb', 'v1', '{}',
                   'rerate')""",
        (uuid.uuid4(), JAN, W, W + timedelta(hours=1)))
    rep = run_reconcile(conn, settings, "2026-01", use_kafka=False)
    assert _keys(rep) == {("c", "beta", "api_calls"), ("e", "beta", "api_calls")}


@pytest.mark.parametrize(
    ("tolerance", "notes"),
    [
        # no tolerance: the rounded line (0.02) vs the charges rounded (0.03) is a mismatch too
        (0, {"precise amount", "rounded amount"}),
        # one minor unit per line tolerated: only the exact (precise) comparison still fails
        (1, {"precise amount"}),
    ],
)
@pytest.mark.usefixtures("invoiced_january")
def test_reconcile_tolerance_widens_only_the_rounded_comparison(settings, conn, tolerance, notes):
    # alpha's storage line: 1.833 x 0.0123 = 0.0225459 -> 0.02; +0.004 makes 0.0265459 -> 0.03
    _superuser_tamper(conn, "UPDATE billing.rated_charges SET amount = amount + 0.004 WHERE "
                      "charge_id = (SELECT charge_id FROM billing.rated_charges WHERE customer_id "
                      "= 'alpha' AND meter = 'storage_gb_hours' LIMIT 1)")
    s = settings.model_copy(update={"billing": settings.billing.model_copy(
        update={"reconcile_tolerance_minor_units": tolerance})})
    rep = run_reconcile(conn, s, "2026-01", use_kafka=False)
    assert {m.note for m in rep.mismatches} == notes
    assert {(m.customer_id, m.meter) for m in rep.mismatches} == {("alpha", "storage_gb_hours")}


@pytest.mark.usefixtures("invoiced_january")
def test_reconcile_cli_exits_non_zero_and_names_the_key(settings, conn):
    _superuser_tamper(conn, "UPDATE billing.rated_charges SET amount = amount + 1 WHERE charge_id "
                      "= (SELECT charge_id FROM billing.rated_charges WHERE customer_id = 'alpha' "
                      "AND meter = 'api_calls' LIMIT 1)")
    env = {**cli_env(settings), "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "cli.app", "reconcile", "--period",
                        "2026-01", "--no-kafka"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    assert "alpha" in r.stdout and "api_calls" in r.stdout and "MISMATCH" in r.stdout
    ok = subprocess.run([sys.executable, "-m", "cli.app", "reconcile", "--period",
                         "2025-12", "--no-kafka"], capture_output=True, text=True, env=env,
                        timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_conservation_counts_kafka_input_against_accepted_duplicates_and_rejected(settings):
    kafka = pytest.importorskip("kafka")
    suffix = secrets.token_hex(4)
    topics = settings.topics.model_copy(update={"events": f"t-in-{suffix}",
                                                "dlq": f"t-dlq-{suffix}",
                                                "late": f"t-late-{suffix}"})
    s = settings.model_copy(update={"topics": topics})
    try:
        producer = kafka.KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers,
                                       request_timeout_ms=5000, max_block_ms=5000)
    except Exception as e:  # noqa: BLE001 - whatever stops the producer means no Kafka here
        pytest.skip(f"Kafka is not reachable: {e}")
    with connect(s, autocommit=True) as c:
        seed_price_book(c, "pb", "USD")
        seed_customer(c, "k", "pb", "USD")
        evs = [{"event_id": f"e{i}", "event_time": (W + timedelta(minutes=i)).isoformat(),
                "customer_id": "k", "meter": "api_calls", "quantity": "1"} for i in range(4)]
        for e in evs:  # 4 valid events, as the metering job would have accepted them
            producer.send(topics.events, json.dumps(e).encode(), key=b"k")
            c.execute("""INSERT INTO billing.usage_events (event_id, customer_id, meter,
                           event_time, ingestion_time, quantity, window_start)
                         VALUES (%s, 'k', 'api_calls', %s, now(), 1, %s)""",
                      (e["event_id"], e["event_time"], W))
        # one duplicate of e0
        producer.send(topics.events, json.dumps(evs[0]).encode(), key=b"k")
        c.execute("""INSERT INTO billing.duplicate_counts (event_id, source, duplicates)
                     VALUES ('e0', 'stream', 1)""")
        # one invalid event (negative quantity), dead-lettered with its reason and payload
        bad = {**evs[1], "event_id": "bad", "quantity": "-1"}
        producer.send(topics.events, json.dumps(bad).encode(), key=b"k")
        producer.send(topics.dlq, json.dumps({"reason": "invalid_quantity", "message": "< 0",
                                              "payload": json.dumps(bad)}).encode(), key=b"k")
        # an event of another period: not counted in January
        producer.send(topics.events, json.dumps({**evs[2], "event_id": "feb",
                      "event_time": "2026-02-03T00:00:00Z"}).encode(), key=b"k")
        producer.flush()
        producer.close()
        rep = run_reconcile(c, s, "2026-01", use_kafka=True, kafka_timeout=5)
        a = rep.checks[0]
        assert a.status == "ok", (a.detail, a.mismatches)
        assert a.detail.startswith("input 6 = accepted 4 + duplicates 1 + rejected 1")
        # an event accepted without a trace in Kafka (or a lost one) breaks the equation
        c.execute("""INSERT INTO billing.usage_events (event_id, customer_id, meter, event_time,
                       ingestion_time, quantity, window_start)
                     VALUES ('ghost', 'k', 'api_calls', %s, now(), 1, %s)""", (W, W))
        rep = run_reconcile(c, s, "2026-01", use_kafka=True, kafka_timeout=5)
        assert rep.checks[0].status == "mismatch"
        assert ("a", "k", "api_calls") in _keys(rep)
