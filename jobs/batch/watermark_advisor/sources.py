"""Where the advisor's arrivals come from: the accepted events in PostgreSQL, or the events topic
itself (before anything ran, or to see the duplicates and rejected records that move the
watermark too). Both return :class:`~jobs.batch.watermark_advisor.sim.Arrivals`."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from jobs.batch.watermark_advisor.sim import Arrivals, arrival_order
from schemas.config import Settings
from schemas.event import AcceptedEvent, parse_event_time, validate_event


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def from_postgres(settings: Settings, start: datetime, end: datetime) -> Arrivals:
    """Every accepted event that arrived in [start, end) (by ingestion time) from
    ``usage_events``: event time, ingestion time, Kafka partition and offset. Events beyond
    allowed lateness are there once the re-rating consumer has stored them (``source =
    'late'``). What the table cannot show: duplicates and rejected records, which move the
    watermark too (``--source kafka`` reads them), and partitions that had no event at all."""
    from sinks.db import connect

    sql = ("COPY (SELECT kafka_partition, kafka_offset,"
           " (extract(epoch FROM ingestion_time) * 1000)::bigint,"
           " (extract(epoch FROM event_time) * 1000)::bigint, customer_id || chr(31) || meter"
           " FROM usage_events WHERE ingestion_time >= {} AND ingestion_time < {}"
           " AND kafka_partition IS NOT NULL) TO STDOUT (FORMAT csv)")
    buf = io.BytesIO()
    with connect(settings) as conn, conn.cursor() as cur:
        from psycopg import sql as psql

        stmt = psql.SQL(sql).format(psql.Literal(start), psql.Literal(end))
        with cur.copy(stmt) as cp:
            for chunk in cp:
                buf.write(chunk)
    names = ["partition", "offset", "clock", "event", "key"]
    if buf.tell() == 0:
        return Arrivals.from_columns(partition=[], offset=[], clock_ms=[], event_ms=[])
    buf.seek(0)
    t = pacsv.read_csv(buf, read_options=pacsv.ReadOptions(column_names=names),
                       convert_options=pacsv.ConvertOptions(column_types={
                           "partition": pa.int64(), "offset": pa.int64(), "clock": pa.int64(),
                           "event": pa.int64(), "key": pa.string()}))
    key = t.column("key").combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    return Arrivals.from_columns(
        partition=t.column("partition").to_numpy(), offset=t.column("offset").to_numpy(),
        clock_ms=t.column("clock").to_numpy(), event_ms=t.column("event").to_numpy(),
        key=key.astype(np.int64), partitions=range(settings.topics.partitions),
    )


def rowtime_ms(raw: bytes | None) -> int:
    """The source's rowtime of a payload: its ``event_time`` read as the job's SQL reads it,
    or the epoch when there is none."""
    try:
        doc = json.loads(raw) if raw is not None else None
        if isinstance(doc, dict):
            return _ms(parse_event_time(doc.get("event_time")))
    except Exception:  # noqa: BLE001 - anything unreadable is the epoch, as in the job
        return 0
    return 0


def from_kafka(settings: Settings, start: datetime | None = None, end: datetime | None = None,
               *, topic: str | None = None, timeout_ms: int = 5000) -> Arrivals:
    """:func:`from_kafka_with_ids` without the ids."""
    return from_kafka_with_ids(settings, start, end, topic=topic, timeout_ms=timeout_ms)[0]


def from_kafka_with_ids(settings: Settings, start: datetime | None = None, end: datetime | None = None,
                        *, topic: str | None = None, timeout_ms: int = 5000) -> tuple[Arrivals, list[str]]:
    """Every record of the events topic with a record timestamp in [start, end) (the whole
    topic without them), validated by the contract (``schemas/event.py``, "now" = the record's
    timestamp) and deduplicated keep-first in arrival order, as the job does. The records'
    timestamps are the arrival clock (the producer's send time or the broker's append time).
    Also the event id of every record in arrival order ("" when rejected)."""
    from kafka import KafkaConsumer, TopicPartition

    topic = topic or settings.topics.events
    kc = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None,
                       enable_auto_commit=False, isolation_level="read_committed",
                       consumer_timeout_ms=timeout_ms)
    try:
        parts = sorted(kc.partitions_for_topic(topic) or ())
        if not parts:
            raise ValueError(f"topic {topic!r} does not exist or has no partitions")
        tps = [TopicPartition(topic, p) for p in parts]
        kc.assign(tps)
        first = kc.beginning_offsets(tps)
        stop = kc.end_offsets(tps)
        if start is not None:
            found = kc.offsets_for_times({tp: _ms(start) for tp in tps})
            first = {tp: (found[tp].offset if found.get(tp) else stop[tp]) for tp in tps}
        if end is not None:
            found = kc.offsets_for_times({tp: _ms(end) for tp in tps})
            stop = {tp: (found[tp].offset if found.get(tp) else stop[tp]) for tp in tps}
        for tp in tps:
            kc.seek(tp, first[tp])
        cols: dict[str, list] = {k: [] for k in ("partition", "offset", "clock", "value")}
        while any(kc.position(tp) < stop[tp] for tp in tps):
            batch = kc.poll(timeout_ms=1000)
            if not batch and all(kc.position(tp) >= stop[tp] for tp in tps):
                break
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset < stop[tp]:
                        cols["partition"].append(m.partition)
                        cols["offset"].append(m.offset)
                        cols["clock"].append(m.timestamp)
                        cols["value"].append(m.value)
    finally:
        kc.close()
    return arrivals_from_records(settings, cols["partition"], cols["offset"], cols["clock"], cols["value"],
                                 partitions=parts)


def arrivals_from_records(settings: Settings, partition: list[int], offset: list[int], clock: list[int],
                          values: list[bytes | None], partitions=()) -> tuple[Arrivals, list[str]]:
    """Raw records -> arrivals (rowtime, contract verdict, keep-first dedup in arrival order)
    and the event ids in arrival order."""
    skew = settings.time.max_future_skew
    meters = settings.meter_aggregations
    n = len(values)
    event = np.zeros(n, dtype=np.int64)
    accepted = np.zeros(n, dtype=bool)
    ids: list[str] = [""] * n
    keys: dict[tuple[str, str], int] = {}
    key = np.zeros(n, dtype=np.int64)
    for i, raw in enumerate(values):  # the contract's validator is per record (I/O bound here)
        event[i] = rowtime_ms(raw)
        if raw is None:
            continue
        v = validate_event(raw, now=datetime.fromtimestamp(clock[i] / 1000, UTC), max_future_skew=skew,
                           meters=meters)
        if isinstance(v, AcceptedEvent):
            accepted[i] = True
            ids[i] = v.event_id
            key[i] = keys.setdefault((v.customer_id, v.meter), len(keys))
    order, clock_in_order = arrival_order(np.asarray(partition, dtype=np.int64),
                                          np.asarray(offset, dtype=np.int64), np.asarray(clock, dtype=np.int64))
    # keep-first: the first accepted copy of each id in arrival order is counted
    counted = accepted[order]
    ids_in_order = np.asarray(ids, dtype=object)[order] if n else np.empty(0, dtype=object)
    if n:
        cand = np.flatnonzero(counted)
        _, first = np.unique(ids_in_order[cand].astype(str), return_index=True)
        counted = np.zeros(n, dtype=bool)
        counted[cand[first]] = True
    arr = Arrivals.from_columns(
        partition=np.asarray(partition, dtype=np.int64)[order], offset=np.asarray(offset, dtype=np.int64)[order],
        clock_ms=clock_in_order, event_ms=event[order], counted=counted, key=key[order], partitions=partitions)
    return arr, [str(x) for x in ids_in_order]


def parse_range(text_from: str | None, text_to: str | None, period: str | None,
                now: datetime) -> tuple[datetime, datetime]:
    """--from/--to (ISO 8601, UTC when without an offset) or --period YYYY-MM; neither: the last
    day before ``now``. Raises ValueError with a one-line message."""
    from pricing.periods import parse_period

    if period and (text_from or text_to):
        raise ValueError("give either --period or --from/--to, not both")
    if period:
        p = parse_period(period)
        return p.start, p.end

    def one(x: str | None, name: str) -> datetime | None:
        if x is None:
            return None
        try:
            d = datetime.fromisoformat(x)
        except ValueError:
            raise ValueError(f"{name} {x!r} is not an ISO 8601 time, e.g. 2026-11-02T00:00:00Z") from None
        return d.astimezone(UTC) if d.tzinfo else d.replace(tzinfo=UTC)

    start = one(text_from, "--from") or now - timedelta(days=1)
    end = one(text_to, "--to") or now
    if end <= start:
        raise ValueError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    return start, end
