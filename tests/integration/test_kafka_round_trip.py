"""A record goes through the real broker of the local stack and comes back as it was sent."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic


def test_a_message_sent_to_usage_events_comes_back_unchanged(stack):
    customer_id = f"it-roundtrip-{secrets.token_hex(4)}"
    event = {
        "event_id": f"evt-{secrets.token_hex(8)}",
        "event_time": "2026-01-15T10:30:00+00:00",
        "customer_id": customer_id,
        "meter": "api_calls",
        "quantity": "3",
        "properties": {"source": "integration-test"},
    }
    key = customer_id.encode()
    value = json.dumps(event, sort_keys=True).encode()
    timestamp_ms = 1_768_473_000_000  # 2026-01-15T10:30:00Z

    producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers, acks="all")
    try:
        sent = producer.send(stack.topic_events, key=key, value=value, timestamp_ms=timestamp_ms)
        metadata = sent.get(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        stack.topic_events,
        bootstrap_servers=stack.bootstrap_servers,
        group_id=f"it-roundtrip-{secrets.token_hex(6)}",  # fresh group: reads from the start
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    found = None
    try:
        deadline = time.monotonic() + 60
        while found is None and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    if r.partition == metadata.partition and r.offset == metadata.offset:
                        found = r
    finally:
        consumer.close()

    assert found is not None, f"record {metadata} not consumed back within 60 s"
    assert found.topic == stack.topic_events
    assert found.key == key
    assert found.value == value
    assert json.loads(found.value) == event
    assert found.timestamp == timestamp_ms


@pytest.fixture
def scratch_topic(stack):
    """A one-partition topic of its own (no one else reads it), deleted afterwards."""
    topic = f"it-scratch-{secrets.token_hex(4)}"
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        yield topic
        admin.delete_topics([topic])
    finally:
        admin.close()


def test_a_transactional_write_is_seen_by_read_committed_consumers_only_once_committed(
    stack, scratch_topic
):
    """Flink's exactly-once KafkaSink relies on broker transactions working on the dev stack."""
    customer_id = f"it-txn-{secrets.token_hex(4)}"
    topic = scratch_topic
    producer = KafkaProducer(
        bootstrap_servers=stack.bootstrap_servers,
        transactional_id=f"it-txn-{secrets.token_hex(6)}",
        enable_idempotence=True,
        acks="all",
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        aborted = producer.send(topic, key=customer_id.encode(), value=b"aborted")
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        committed = producer.send(topic, key=customer_id.encode(), value=b"committed")
        producer.commit_transaction()
        aborted_md, committed_md = aborted.get(timeout=30), committed.get(timeout=30)
    finally:
        producer.close()
    assert aborted_md.partition == committed_md.partition  # same key, same partition

    consumer = KafkaConsumer(
        bootstrap_servers=stack.bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )

    tp = TopicPartition(topic, committed_md.partition)
    consumer.assign([tp])
    consumer.seek(tp, aborted_md.offset)
    seen = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(r.value == b"committed" for r in seen):
            for records in consumer.poll(timeout_ms=1000).values():
                seen.extend(r for r in records if r.key == customer_id.encode())
    finally:
        consumer.close()

    assert [r.value for r in seen] == [b"committed"]
