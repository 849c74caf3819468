"""Helpers shared by the re-rating tests (no tests here): late-topic records, Kafka producing,
and reading the final state of Postgres."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from kafka import KafkaProducer

from pricing.book import load_price_book
from pricing.periods import period_start, to_epoch_ms
from pricing.rater import rate_period
from schemas.config import Settings
from sinks.db import connect
from tests.integration.metering_util import PRICE_BOOK

H = timedelta(hours=1)


def late_record(event_id: str, customer: str, meter: str, t: datetime, q: str = "1",
                window: timedelta = H, **extra: Any) -> bytes:
    """A record as the metering job writes it to usage-events-late."""
    ms = to_epoch_ms(t)
    w = int(window / timedelta(milliseconds=1))
    ws = ms - ms % w
    d = {
        "event_id": event_id, "customer_id": customer, "meter": meter, "event_time_ms": ms,
        "quantity": q, "properties": None, "window_start_ms": ws, "window_end_ms": ws + w,
        "watermark": "2026-12-01 00:00:00.000", "payload": "{}", "ingestion_time_ms": ms + 86_400_000,
        "src_topic": "usage-events", "src_partition": 0, "src_offset": 0,
    }
    d.update(extra)
    return json.dumps(d).encode()


def produce(settings: Settings, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    p = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=5)
    try:
        for v in values:
            p.send(topic, key=key, value=v)
        p.flush()
    finally:
        p.close()


def final_windows(settings: Settings) -> dict[tuple[str, str, datetime], dict[datetime, Decimal]]:
    """(customer, meter, period) -> window_start -> quantity of the latest revision."""
    out: dict[tuple[str, str, datetime], dict[datetime, Decimal]] = defaultdict(dict)
    with connect(settings) as conn:
        for c, m, ws, q in conn.execute(
            """SELECT DISTINCT ON (customer_id, meter, window_start) customer_id, meter, window_start, quantity
                 FROM aggregated_usage ORDER BY customer_id, meter, window_start, revision DESC"""):
            out[(c, m, period_start(ws))][ws] = q
    return dict(out)


def charged(settings: Settings) -> dict[tuple[str, str, datetime], Decimal]:
    with connect(settings) as conn:
        return {(c, m, p): s for c, m, p, s in conn.execute(
            "SELECT customer_id, meter, period_start, sum(amount) FROM rated_charges GROUP BY 1, 2, 3")}


def assert_sigma_equals_rate(settings: Settings, book_path=PRICE_BOOK) -> None:
    """Invariant 2: Σ charges per (customer, meter, period) == Rate over the final windows."""
    book = load_price_book(book_path)
    aggs = settings.meter_aggregations
    fw, ch = final_windows(settings), charged(settings)
    assert set(ch) <= set(fw), "charges for a period without windows"
    for (c, m, p), windows in fw.items():
        expected = rate_period(book, m, windows, aggregation=aggs[m], customer_id=c)
        assert ch.get((c, m, p), Decimal(0)) == expected, (c, m, p, ch.get((c, m, p)), expected)


def snapshot(settings: Settings) -> list[Any]:
    """A digest of every append-only table (and the counters), to compare runs."""
    with connect(settings) as conn:
        out = []
        for t, cols in (("usage_events", "event_id, customer_id, meter, quantity, window_start, source"),
                        ("aggregated_usage",
                         "customer_id, meter, window_start, revision, quantity, event_count, source"),
                        ("rated_charges", "charge_id, amount, cause, revision"),
                        ("duplicate_counts", "event_id, source, duplicates")):
            out.append(conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) "
                f"FROM (SELECT {cols} FROM {t}) x").fetchone())
        return out


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)
