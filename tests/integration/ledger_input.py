"""Ledger-topic input in the metering job's format (jobs/flink/metering.py LEDGER_COLUMNS, keyed by
customer_id), for tests of the ledger writer alone: on-time events, then their window's firing,
duplicate copies, and late events within lateness after the firing."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import datetime, timedelta

from kafka import KafkaProducer, TopicPartition

from jobs.flink.metering import LEDGER_COLUMNS
from pricing.periods import to_epoch_ms
from schemas.config import Settings
from sinks.db import connect

H = timedelta(hours=1)


def _doc(**fields) -> bytes:
    """Columns in LEDGER_COLUMNS order, compact, as Flink's JSON format writes them."""
    return json.dumps({c: fields.get(c) for c, _ in LEDGER_COLUMNS}, separators=(",", ":")).encode()


def event(event_id: str, c: str, m: str, t: datetime, q: int, *, lateness: str = "on_time",
          offset: int = 0, properties: str | None = None) -> bytes:
    ms = to_epoch_ms(t)
    ws = ms - ms % 3_600_000
    return _doc(kind="event", customer_id=c, meter=m, window_start_ms=ws, window_end_ms=ws + 3_600_000,
                event_id=event_id, event_time_ms=ms, quantity=str(q), properties=properties,
                ingestion_time_ms=ms + 1000, src_topic="usage-events", src_partition=0,
                src_offset=offset, lateness=lateness)


def firing(c: str, m: str, ws: datetime, qs: Sequence[int]) -> bytes:
    return _doc(kind="window", customer_id=c, meter=m, window_start_ms=to_epoch_ms(ws),
                window_end_ms=to_epoch_ms(ws + H), qsum=str(sum(qs)), qcount=len(qs),
                qmax=str(max(qs)))


def ledger_input(customers: Sequence[str], start: datetime, windows: int, per_window: int,
                 seed: int = 1, tag: str = "") -> list[tuple[bytes, bytes]]:
    """(key, value) messages: per customer, meter and window, its events (a few sent twice),
    the firing, and now and then a late event within lateness."""
    rnd = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    offset = 0
    for w in range(windows):
        ws = start + w * H
        for c in customers:
            key = c.encode()
            for m in ("api_calls", "seats"):
                qs = []
                for i in range(per_window):
                    q = rnd.randint(1, 50)
                    qs.append(q)
                    offset += 1
                    ev = event(f"{tag}{c}-{m}-{w}-{i}", c, m, ws + i * timedelta(seconds=7), q, offset=offset)
                    out.append((key, ev))
                    if rnd.random() < 0.05:  # a duplicate copy (another input record)
                        offset += 1
                        out.append((key, event(f"{tag}{c}-{m}-{w}-{i}", c, m, ws + i * timedelta(seconds=7),
                                               q, offset=offset)))
                out.append((key, firing(c, m, ws, qs)))
                if rnd.random() < 0.1:
                    offset += 1
                    out.append((key, event(f"{tag}{c}-{m}-{w}-late", c, m, ws + timedelta(minutes=59),
                                           rnd.randint(1, 9), lateness="late", offset=offset)))
    return out


def produce_keyed(settings: Settings, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    p = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=5)
    try:
        for k, v in messages:
            p.send(topic, key=k, value=v)
        p.flush()
    finally:
        p.close()


def end_offsets(settings: Settings, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    from kafka import KafkaConsumer

    kc = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(kc.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): o for tp, o in kc.end_offsets(tps).items()}
    finally:
        kc.close()


def stored_offsets(settings: Settings, consumer: str = "metering-ledger") -> dict[tuple[str, int], int]:
    with connect(settings) as conn:
        return {(t, p): o for t, p, o in conn.execute(
            "SELECT topic, partition, next_offset FROM ledger_offsets WHERE consumer = %s", (consumer,))}


def caught_up(settings: Settings, topics: Sequence[str]) -> bool:
    """Every partition with records is applied up to its end (a partition never written to has
    no stored offset and needs none)."""
    stored = stored_offsets(settings)
    return all(stored.get(tp, 0) >= end for tp, end in end_offsets(settings, topics).items() if end > 0)


def duplicate_counts(messages: Sequence[tuple[bytes, bytes]], every: int = 20) -> list[tuple[bytes, bytes]]:
    """The metering job's duplicate counters (upsert-kafka, keyed by event_id) for every
    ``every``-th event of ``messages``: a count of 1, then 2 (the topic keeps the latest)."""
    out = []
    ids = [json.loads(v)["event_id"] for _, v in messages if v.startswith(b'{"kind":"event"')][::every]
    for n in (1, 2):
        for eid in ids:
            out.append((eid.encode(), json.dumps({"event_id": eid, "duplicates": n, "epoch_ms": 7}).encode()))
    return out
