"""reconcile's Kafka read (jobs/reconcile.count_topic) on partitions whose records a
read_committed consumer never sees: aborted transactions and their markers. A killed metering job
leaves exactly that on its transactional output topics (the DLQ, the ledger)."""

from __future__ import annotations

import json
import secrets

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from jobs.batch.reconcile import TopicKind, count_topic
from pricing.periods import parse_period
from schemas.config import load_settings

pytestmark = pytest.mark.integration


def _event(i: int) -> bytes:
    return json.dumps({"event_id": f"e{i}", "event_time": "2026-11-03T10:00:00Z", "customer_id": "c1",
                       "meter": "api_calls", "quantity": 1}).encode()


def test_a_partition_holding_only_aborted_records_is_read_to_its_end(stack) -> None:
    settings = load_settings()
    topic = f"it-aborted-{secrets.token_hex(4)}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers,
                             transactional_id=f"{topic}-tx", enable_idempotence=True)
    try:
        producer.init_transactions()
        # partition 0: only aborted records (and the abort marker)
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic, _event(i), partition=0)
        producer.flush()
        producer.abort_transaction()
        # partition 1: aborted records, then committed ones
        producer.begin_transaction()
        producer.send(topic, _event(10), partition=1)
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        for i in range(20, 23):
            producer.send(topic, _event(i), partition=1)
        producer.commit_transaction()
    finally:
        producer.close()

    counts = count_topic(settings, topic, parse_period("2026-11"), kind=TopicKind.EVENTS, timeout=2.0)
    assert counts == {("c1", "api_calls"): 3}


def test_late_topic_records_are_counted_in_the_period_of_their_event_time(stack) -> None:
    """A late record (schemas.records.LATE_COLUMNS) carries the original payload as text and its
    event time as ``event_time_ms``; it was written long after its period (its Kafka timestamp is
    now). Reconcile used to read the payload field as the event and fall back to the timestamp, so
    it always printed "late topic: 0"."""
    settings = load_settings()
    topic = f"it-late-{secrets.token_hex(4)}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    inside = 1_793_700_000_000  # 2026-11-03T10:00:00Z
    outside = 1_796_378_400_000  # 2026-12-04T10:00:00Z
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        for i, ms in enumerate((inside, inside, outside)):
            producer.send(topic, json.dumps({
                "event_id": f"l{i}", "customer_id": "c1", "meter": "api_calls", "event_time_ms": ms,
                "quantity": "1", "window_start_ms": ms, "window_end_ms": ms + 3_600_000,
                "payload": _event(i).decode(), "ingestion_time_ms": outside}).encode())
        producer.flush()
    finally:
        producer.close()
    counts = count_topic(settings, topic, parse_period("2026-11"), kind=TopicKind.LATE, timeout=2.0)
    assert counts == {("c1", "api_calls"): 2}
