"""``meterflow produce``: send a JSON-lines file, or N synthetic events, to the events topic.

Records are keyed by customer_id (the contract). The Kafka record timestamp is the producer's
clock, NOT the event_time: Kafka's time-based retention works on record timestamps, so a backfill
stamped with old event times would be deleted by the broker minutes after it was written.
meterflow reads event time from the payload. Lines are sent byte for byte as they are in the file
(no re-encoding), so that invalid payloads reach the job, and its DLQ, intact.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from kafka import KafkaProducer

from jobs.progress import Progress, progress_of
from jobs.tools.synthetic import SyntheticRecord
from schemas.config import Settings

log = logging.getLogger("meterflow.produce")


def records_from_jsonl(path: Path) -> Iterator[SyntheticRecord]:
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            key = b""
            try:
                doc = json.loads(line)
                if isinstance(doc, dict) and isinstance(doc.get("customer_id"), str):
                    key = doc["customer_id"].encode("utf-8", "surrogatepass")
            except ValueError:
                pass  # an invalid line is sent as it is: the job dead-letters it
            except RecursionError:
                # JSON nested deeper than Python's parser goes: the job dead-letters it too
                log.warning("%s line %d: JSON nested too deeply to read; sent as it is, without a key", path, n)
            yield SyntheticRecord(key, line, 0, "file")


def make_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=2 * 1024 * 1024,
        retries=5,
    )


def send(
    settings: Settings,
    records: Iterable[SyntheticRecord],
    *,
    topic: str | None = None,
    total: int | None = None,
    progress: Progress | bool | None = None,
) -> Counter[str]:
    """Send records, flush, and return how many of each kind were sent."""
    topic = topic or settings.topics.events
    producer = make_producer(settings)
    counts: Counter[str] = Counter()
    errors: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)

    bar = progress_of(progress)
    bar.start(f"producing {topic}", total)
    try:
        for i, rec in enumerate(records, 1):
            producer.send(topic, key=rec.key or None, value=rec.value).add_errback(on_error)
            counts[rec.kind] += 1
            if rec.expected_reason:
                counts[f"reason:{rec.expected_reason}"] += 1
            if i % 2000 == 0:
                bar.update(i)
        producer.flush()
        bar.update(sum(v for k, v in counts.items() if ":" not in k))
    finally:
        bar.finish()
    producer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} records were not acknowledged by Kafka: {errors[0]!r}")
    return counts
