"""The alerts publisher: moves ``billing.alert_outbox`` to the Kafka topic ``billing-alerts``.

Alerts are made in Postgres, exactly once, in the transaction that applies the batch that crossed
a level (``sinks/alerts.py``). The topic gets them through this outbox: a batch of pending rows is
locked (``FOR UPDATE SKIP LOCKED``: several publishers share the work), sent, flushed until the
broker acknowledged every record, then marked published in the same transaction. A crash between
the acknowledgement and the commit sends those records again: delivery is AT-LEAST-ONCE, and
consumers dedup by ``alert_id`` (the record key is the customer, the value carries the id; an
alert's id is deterministic, so a re-sent record is the same record). We chose this over Kafka
transactions because the alert's source of truth is Postgres: a Kafka transaction cannot commit
atomically with the Postgres one, so exactly-once would still need consumer-side dedup.

Latency: the ledger transaction NOTIFYs ``meterflow_alerts`` at commit; the publisher LISTENs and
wakes at once (else it polls every ``poll_s``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from sinks.alerts import NOTIFY_CHANNEL, alert_json

log = logging.getLogger("meterflow.alerts")

ALERTS_TOPIC = "billing-alerts"


def publish_pending(conn: psycopg.Connection, producer: Any, topic: str = ALERTS_TOPIC,
                    limit: int = 1000) -> int:
    """Publish up to ``limit`` pending alerts, oldest first; returns how many."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT o.seq, a.alert_id, a.rule_id, a.kind, a.customer_id, a.scope, a.period_start,
                      a.level, a.status, a.crossing, a.direction, a.threshold, a.value, a.meter,
                      a.currency, a.created_at
                 FROM billing.alert_outbox o JOIN billing.alerts a USING (alert_id)
                WHERE o.published_at IS NULL ORDER BY o.seq LIMIT %s
                  FOR UPDATE OF o SKIP LOCKED""", (limit,)).fetchall()
        if not rows:
            return 0
        futures = []
        for r in rows:
            seq = r.pop("seq")
            if r["currency"]:
                r["currency"] = r["currency"].strip()
            futures.append((seq, producer.send(topic, key=r["customer_id"].encode(), value=alert_json(r))))
        producer.flush()
        for _seq, f in futures:
            f.get(timeout=30)  # raises if the broker did not take it: nothing is marked
        cur.execute("UPDATE billing.alert_outbox SET published_at = clock_timestamp() WHERE seq = ANY (%s)",
                    ([s for s, _ in futures],))
    return len(rows)


def make_producer(bootstrap_servers: str, **properties: Any) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=0, **properties)


def run_publisher(connect: Callable[[], psycopg.Connection], producer: Any, *, topic: str = ALERTS_TOPIC,
                  stop: Callable[[], bool] = lambda: False, poll_s: float = 1.0,
                  once: bool = False) -> int:
    """Publish until ``stop()`` (``once``: until the outbox is empty). Returns how many were sent."""
    total = 0
    conn = connect()
    listen = None
    try:
        if not once:
            listen = connect()
            listen.autocommit = True
            listen.execute(f"LISTEN {NOTIFY_CHANNEL}")
        while not stop():
            n = publish_pending(conn, producer, topic)
            total += n
            if n:
                continue
            if once:
                break
            assert listen is not None
            for _ in listen.notifies(timeout=poll_s, stop_after=1):
                pass
    finally:
        if listen is not None:
            listen.close()
        conn.close()
    return total


def wait_published(connect: Callable[[], psycopg.Connection], timeout_s: float = 30) -> bool:
    """True once the outbox has nothing pending (tests, the demo)."""
    deadline = time.monotonic() + timeout_s
    with connect() as conn:
        while time.monotonic() < deadline:
            if not conn.execute("SELECT 1 FROM billing.alert_outbox WHERE published_at IS NULL LIMIT 1").fetchone():
                return True
            conn.commit()
            time.sleep(0.1)
    return False
