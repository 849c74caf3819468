"""A record goes through the real broker of the local stack and comes back as it was sent."""

from __future__ import annotations

import json
import secrets
import time

from kafka import KafkaConsumer, KafkaProducer


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
