"""The Kafka topics meterflow uses, created when missing (idempotent)."""

from __future__ import annotations

import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from schemas.config import Settings


def topic_specs(settings: Settings) -> dict[str, dict[str, str]]:
    t = settings.topics
    return {
        t.events: {},
        t.dlq: {},
        t.late: {},
        t.ledger: {},
        # one value per event id is what matters: compaction keeps the latest count
        t.duplicates: {"cleanup.policy": "compact"},
        t.alerts: {},
    }


def ensure_topics(settings: Settings, timeout_s: float = 30) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    deadline = time.monotonic() + timeout_s
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers,
                             client_id="meterflow-topics", request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, settings.topics.partitions, 1, topic_configs=cfg)
            for name, cfg in topic_specs(settings).items()
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        names = list(topic_specs(settings))
        while time.monotonic() < deadline:
            described = admin.describe_topics(names)
            if len(described) == len(names) and all(
                d.get("error_code", 0) == 0 and d.get("partitions")
                and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in d["partitions"])
                for d in described
            ):
                break
            time.sleep(0.2)
        return [m.name for m in missing]
    finally:
        admin.close()
