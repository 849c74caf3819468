"""Helpers for tests that run the metering job against the real stack: a private set of topics
and a fresh database per test, so tests never see each other's data."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from pricing.book import load_price_book
from pricing.reference import Customer
from schemas.config import REPO_ROOT, Settings, load_settings
from sinks.db import connect
from sinks.pricebook_store import store_customers, store_price_books
from tests.integration.dbutil import fresh_database

PRICE_BOOK = REPO_ROOT / "examples" / "pricebooks" / "standard-usd.toml"


def with_private_names(base: Settings, tag: str, partitions: int) -> Settings:
    """``base`` with topics ``<tag>-events`` … and consumer group ``tag``."""
    topics = base.topics.model_copy(update={
        "events": f"{tag}-events", "dlq": f"{tag}-dlq", "late": f"{tag}-late",
        "ledger": f"{tag}-ledger", "duplicates": f"{tag}-dups", "partitions": partitions,
    })
    kafka = base.kafka.model_copy(update={"consumer_group": tag})
    return base.model_copy(update={"topics": topics, "kafka": kafka})


@contextmanager
def private_metering_settings(partitions: int = 4, **time: str) -> Iterator[Settings]:
    """Settings with unique topics, consumer group and checkpoint dir, and a fresh database."""
    tag = f"it-{secrets.token_hex(4)}"
    base = with_private_names(load_settings(), tag, partitions)
    t = type(base.time)(**{**base.time.model_dump(), **time})
    flink = base.flink.model_copy(update={"checkpoint_interval": _dur("2s"),
                                          "checkpoint_dir": str(REPO_ROOT / ".local" / "test-checkpoints" / tag)})
    s = base.model_copy(update={"time": t, "flink": flink})
    with fresh_database(s) as s2:
        from jobs.tools.topics import ensure_topics

        ensure_topics(s2)
        yield s2


def _dur(v: str):
    from schemas.config import parse_duration

    return parse_duration(v)


def load_prices(settings: Settings, customers: Iterable[str]) -> None:
    book = load_price_book(PRICE_BOOK)
    with connect(settings) as conn:
        store_price_books(conn, [book])
        store_customers(conn, [Customer(customer_id=c, price_book_id=book.price_book_id,
                                        currency=book.currency, tax_region="US-CA")
                               for c in customers])
        conn.commit()


def read_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every committed record of a topic, JSON-decoded with exact decimals."""
    kc = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None,
                       enable_auto_commit=False, isolation_level="read_committed",
                       consumer_timeout_ms=2000)
    try:
        parts = kc.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        kc.assign(tps)
        kc.seek_to_beginning(*tps)
        end = kc.end_offsets(tps)
        out = []
        while any(kc.position(tp) < end[tp] for tp in tps):
            for msgs in kc.poll(timeout_ms=1000).values():
                out.extend(json.loads(m.value, parse_float=Decimal) for m in msgs if m.value is not None)
        return out
    finally:
        kc.close()


def counts(rows: Iterable[dict[str, Any]], key: str) -> Counter[str]:
    return Counter(r[key] for r in rows)
