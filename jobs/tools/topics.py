"""The Kafka topics meterflow uses, created when missing (idempotent; ``meterflow topics create``),
and the check that a topic exists before anything is sent to it: the local broker auto-creates a
topic on first use with its own ``num.partitions``, whatever ``topics.partitions`` says."""

from __future__ import annotations

import socket
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


class KafkaUnreachable(ConnectionError):
    """No bootstrap server accepts a TCP connection: no Kafka client could do better, so a command
    says so at once instead of waiting for the client's bootstrap timeout."""

    def __init__(self, bootstrap_servers: str, reason: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        super().__init__(f"Kafka is unreachable at {bootstrap_servers} ({reason})")


def check_reachable(settings: Settings, timeout_s: float = 3.0) -> None:
    """Raise :class:`KafkaUnreachable` unless some bootstrap server accepts a TCP connection
    within ``timeout_s``. A server that accepts may still be unhealthy: the clients' own
    timeouts cover that case."""
    reasons = []
    for server in settings.kafka.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError) as e:
            reasons.append(f"{server.strip()}: {getattr(e, 'strerror', None) or e}")
    raise KafkaUnreachable(settings.kafka.bootstrap_servers, "; ".join(reasons))


class TopicMissing(LookupError):
    """Topics a command needs do not exist; ``meterflow topics create`` creates them."""

    def __init__(self, topics: list[str], bootstrap_servers: str) -> None:
        self.topics = topics
        many = len(topics) > 1
        super().__init__(f"topic{'s' if many else ''} {', '.join(topics)} {'do' if many else 'does'} not "
                         f"exist on {bootstrap_servers}: create {'them' if many else 'it'} with "
                         "`meterflow topics create` (or `meterflow init`)")


def _admin(settings: Settings, bootstrap_timeout_ms: int = 30_000) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers, client_id="meterflow-topics",
                            request_timeout_ms=10_000, bootstrap_timeout_ms=bootstrap_timeout_ms)


def require_topics(settings: Settings, topics: list[str]) -> None:
    """Raise :class:`TopicMissing` unless every topic exists. Lists the cluster's topics (a
    metadata request for all topics, which never auto-creates one); no broker answering within
    10 s raises kafka-python's bootstrap timeout."""
    admin = _admin(settings, bootstrap_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    missing = [t for t in topics if t not in existing]
    if missing:
        raise TopicMissing(missing, settings.kafka.bootstrap_servers)


def ensure_topics(settings: Settings, timeout_s: float = 30) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    deadline = time.monotonic() + timeout_s
    admin = _admin(settings)
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
