"""An event id, once accepted, is counted once — across bounded runs and after the dedup horizon
(DESIGN.md invariant 1, issue 13): the real metering job on the real stack, the ledger writer and
reconcile. Flink's dedup state is only the first filter; the ledger writer decides, durably."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from jobs.batch.reconcile import run_reconcile
from jobs.flink.run import run_ledger_writer, run_metering
from jobs.tools.produce import make_producer
from sinks.db import connect
from tests.e2e.test_metering_restart import streaming_job
from tests.integration.metering_util import load_prices, private_metering_settings, read_topic

pytestmark = pytest.mark.integration

C = "cust-dedup"
W10 = datetime(2026, 11, 10, 10, tzinfo=UTC)


def event(event_id: str, quantity: int, at: str, customer: str = C) -> dict:
    return {"event_id": event_id, "event_time": f"2026-11-10T{at}Z", "customer_id": customer,
            "meter": "api_calls", "quantity": quantity}


def produce(settings, *events: dict) -> None:
    p = make_producer(settings)
    for e in events:
        p.send(settings.topics.events, key=e["customer_id"].encode(),
               value=json.dumps(e, separators=(",", ":")).encode())
    p.flush()
    p.close()


def window_10(settings) -> tuple[Decimal, int]:
    with connect(settings) as conn:
        return conn.execute(
            """SELECT quantity, event_count FROM aggregated_usage WHERE customer_id = %s
                AND meter = 'api_calls' AND window_start = %s ORDER BY revision DESC LIMIT 1""",
            (C, W10)).fetchone()


def test_a_producer_retry_in_a_later_bounded_run_is_counted_once_and_reconcile_passes() -> None:
    """Issue 13's reproduction: run 1 accepts e1 (100) and e2 (5); the producer retries e1 and
    sends e3 (1); run 2 (a fresh Flink job: no dedup state for e1) must not bill e1 again."""
    with private_metering_settings(partitions=2, watermark_emit="on-event") as settings:
        load_prices(settings, [C])
        produce(settings, event("e1", 100, "10:00:00"), event("e2", 5, "10:30:00"))
        run_metering(settings, bounded=True)
        assert window_10(settings) == (Decimal(105), 2)

        produce(settings, event("e1", 100, "10:00:00"), event("e3", 1, "10:40:00"))
        run_metering(settings, bounded=True)
        assert window_10(settings) == (Decimal(106), 3)
        with connect(settings) as conn:
            assert conn.execute("SELECT count(*), sum(quantity) FROM usage_events").fetchone() == (3, Decimal(106))
            assert conn.execute("""SELECT source, sum(duplicates) FROM duplicate_counts
                                    GROUP BY source""").fetchall() == [("ledger", 1)]
            charged = conn.execute("SELECT sum(quantity_delta) FROM rated_charges").fetchone()[0]
            assert charged == Decimal(106)
            conn.commit()
            rep = run_reconcile(conn, settings, "2026-11", record=False)
        assert rep.ok, [(m.check, m.customer_id, m.expected, m.actual) for m in rep.mismatches]
        assert rep.kafka_checked


def test_a_resend_after_the_dedup_horizon_in_a_streaming_run_is_counted_once(tmp_path: Path) -> None:
    """The job's dedup state forgets an id after time.dedup_horizon (here 1 s of processing
    time); a copy re-sent later is accepted by Flink and counted in its window aggregate, and the
    ledger writer still counts it as a duplicate, not as usage."""
    with private_metering_settings(partitions=1, dedup_horizon="1s", allowed_lateness="1s",
                                   max_out_of_orderness="0s", idleness_timeout="30s") as settings:
        load_prices(settings, [C])
        env = {"METERFLOW__TIME__DEDUP_HORIZON": "1s", "METERFLOW__TIME__WATERMARK_EMIT": "on-event"}
        with streaming_job(settings, tmp_path, **env):
            produce(settings, event("h1", 100, "10:00:00"), event("h2", 5, "10:30:00"))
            wait_for(lambda: events_on_ledger(settings) >= 2, "the first two events on the ledger topic")
            time.sleep(3)  # past the dedup horizon
            produce(settings, event("h1", 100, "10:00:00"), event("h3", 1, "10:40:00"),
                    event("h4", 1, "12:00:00"))  # h4 moves the watermark past 10:00's window
            wait_for(lambda: fired(settings, W10), "window 10:00 fired")
        run_ledger_writer(settings, bounded=True)
        firing = fired(settings, W10)
        assert firing["qcount"] == 4  # Flink counted the re-sent copy: its state had expired
        assert window_10(settings) == (Decimal(106), 3)
        with connect(settings) as conn:
            assert conn.execute("""SELECT sum(duplicates) FROM duplicate_counts
                                    WHERE event_id = 'h1'""").fetchone()[0] == 1
            assert conn.execute("SELECT count(*) FROM usage_events").fetchone()[0] == 4


def events_on_ledger(settings) -> int:
    return sum(1 for r in read_topic(settings, settings.topics.ledger) if r["kind"] == "event")


def fired(settings, ws: datetime) -> dict | None:
    ms = int(ws.timestamp() * 1000)
    return next((r for r in read_topic(settings, settings.topics.ledger)
                 if r["kind"] == "window" and r["window_start_ms"] == ms), None)


def wait_for(cond, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)
