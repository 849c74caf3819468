"""reconcile's Kafka read (jobs/reconcile.count_topic) on partitions whose records a
read_committed consumer never sees: aborted transactions and their markers. A killed metering job
leaves exactly that on its transactional output topics (the DLQ, the ledger)."""

from __future__ import annotations

import json
import secrets

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from jobs.batch.invoicing import parse_period
from jobs.batch.reconcile import TopicKind, count_topic
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
