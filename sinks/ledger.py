"""The ledger store: applies a batch of the metering job's committed outputs to PostgreSQL exactly
once, and rates every window change with ``pricing/``. The Kafka loop that feeds it is
``jobs/consumers/ledger_writer.py``; the records it applies are typed in ``schemas/records.py``.

Why a separate stage. The Flink job writes its outputs to Kafka with transactions committed on
checkpoints (exactly-once): what a consumer reading ``read_committed`` sees is consistent with the
job's checkpointed state, whatever failures and restarts happened. This writer consumes those
topics in batches and, in ONE Postgres transaction per batch:

1. inserts accepted raw events (``usage_events``, idempotent by event_id); the metering job's
   event messages go to Postgres as the JSON text they are, and Postgres reads their fields
   (:class:`EventJson`): no per-event parse in Python;
2. folds window changes into new window revisions (``aggregated_usage``): the job emits its window
   aggregate as a changelog (first firing, then a retraction + new value per late firing); each
   message is applied as a delta, so a window's state is the sum of everything the job counted
   for it, even when a restart re-created a window the job had already purged;
3. rates the changed windows of each (customer, meter, billing period) with
   :class:`pricing.rater.PeriodRater`, restored from what Postgres holds (the latest revision of
   every window of the period and Σ charges recorded), and appends the delta charges;
4. records the next offsets of the batch (``ledger_offsets``).

Because the offsets commit with the rows, a batch is applied exactly once. Because the rating
state is read from Postgres under a per-(customer, meter, period) advisory lock, any other writer
that takes the same lock (the re-rating job, ``meterflow rerate``) can work on the same period at
the same time and Σ charges still equals Rate(period) over the final windows (DESIGN.md invariant
2): Postgres is the single writer's memory, the lock makes writers take turns.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson
import psycopg

from pricing.errors import PricingError
from pricing.periods import from_epoch_ms, period_end, period_start
from pricing.rater import PeriodRater, aggregation_of
from schemas.records import DuplicateCount, LedgerEvent, WindowChange
from sinks.alerts import AlertRules, after_batch
from sinks.pricebook_store import PriceBooks, RatingError

log = logging.getLogger("meterflow.ledger")

# a batch holds thousands of windows of a few distinct starts: their period is computed once each
_period_start = lru_cache(maxsize=1024)(period_start)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

LOCK_BUCKETS = 4096  # advisory locks are taken per bucket of (customer, meter, period)
_LOCK_NAMESPACE = 0x4C45  # "LE": the first half of the two-int advisory lock key



# --- applying a batch -------------------------------------------------------------------------


@dataclass
class Batch:
    events: list[LedgerEvent] = field(default_factory=list)
    event_json: list[bytes] = field(default_factory=list)  # EventJson values
    windows: list[WindowChange] = field(default_factory=list)
    duplicates: list[DuplicateCount] = field(default_factory=list)
    # (topic, partition) -> next offset to read after this batch
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # (topic, partition) -> offset of the batch's first message there
    start_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # windows of on-time event messages that were dead-lettered: read, though never accepted
    dead_on_time: list[WindowKey] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.event_json) + len(self.windows) + len(self.duplicates)


@dataclass
class ApplyResult:
    events_inserted: int = 0
    revisions: int = 0
    charges: int = 0
    rating_errors: int = 0
    duplicates: int = 0
    dead_letters: int = 0  # records dead-lettered (billing.ledger_dead_letters)
    alerts: int = 0  # alerts raised (billing.alerts, docs/ALERTS.md)


PeriodKey = tuple[str, str, datetime]  # customer, meter, period_start
WindowKey = tuple[str, str, datetime]  # customer, meter, window_start


def lock_bucket(key: PeriodKey) -> int:
    c, m, ps = key
    h = hashlib.blake2b(f"{c}\x1f{m}\x1f{ps.isoformat()}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % LOCK_BUCKETS


def lock_periods(conn: psycopg.Connection, keys: Iterable[PeriodKey]) -> None:
    """Take the advisory transaction locks of these periods, in a fixed order (no deadlocks)."""
    buckets = sorted({lock_bucket(k) for k in keys})
    if buckets:
        conn.execute(
            "SELECT count(pg_advisory_xact_lock(%s, b)) FROM unnest(%b::int[]) AS b",
            (_LOCK_NAMESPACE, buckets),
        )


@dataclass
class WindowState:
    window_end: datetime
    qsum: Decimal
    qcount: int
    qmax: Decimal
    revision: int

    def quantity(self, aggregation: str) -> Decimal:
        if aggregation == "count":
            return Decimal(self.qcount)
        if aggregation == "max":
            return self.qmax
        return self.qsum


def load_period_windows(
    conn: psycopg.Connection, periods: Sequence[PeriodKey]
) -> dict[PeriodKey, dict[datetime, WindowState]]:
    """The latest revision of every window of these periods (from aggregated_usage)."""
    out: dict[PeriodKey, dict[datetime, WindowState]] = {k: {} for k in periods}
    if not periods:
        return out
    cs = [k[0] for k in periods]
    ms = [k[1] for k in periods]
    ps = [k[2] for k in periods]
    pe = [period_end(k[2]) for k in periods]
    rows = conn.execute(
        """SELECT DISTINCT ON (a.customer_id, a.meter, a.window_start)
                  k.c, k.m, k.ps, a.window_start, a.window_end, a.qsum, a.event_count, a.qmax, a.revision
             FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[]) AS k(c, m, ps, pe)
             JOIN billing.aggregated_usage a
               ON a.customer_id = k.c AND a.meter = k.m
              AND a.window_start >= k.ps AND a.window_start < k.pe
            ORDER BY a.customer_id, a.meter, a.window_start, a.revision DESC""",
        (cs, ms, ps, pe),
    ).fetchall()
    for c, m, p, ws, we, qsum, n, qmax, rev in rows:
        out[(c, m, p)][ws] = WindowState(we, qsum, n, qmax, rev)
    return out


def _load_latest_windows(conn: psycopg.Connection, periods: Sequence[PeriodKey],
                         keys: Sequence[WindowKey]) -> dict[PeriodKey, dict[datetime, WindowState]]:
    """The latest revision of these windows (those that have one), by period (every period of
    ``periods`` has an entry): one index probe per window."""
    out: dict[PeriodKey, dict[datetime, WindowState]] = {k: {} for k in periods}
    if not keys:
        return out
    rows = conn.execute(
        """SELECT k.c, k.m, k.ws, a.window_end, a.qsum, a.event_count, a.qmax, a.revision
             FROM unnest(%b::text[], %b::text[], %b::timestamptz[]) AS k(c, m, ws)
             JOIN LATERAL (SELECT * FROM billing.aggregated_usage a
                            WHERE a.customer_id = k.c AND a.meter = k.m AND a.window_start = k.ws
                            ORDER BY a.revision DESC LIMIT 1) a ON TRUE""",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
    ).fetchall()
    for c, m, ws, we, qsum, n, qmax, rev in rows:
        out[(c, m, _period_start(ws))][ws] = WindowState(we, qsum, n, qmax, rev)
    return out


def load_charged(conn: psycopg.Connection, periods: Sequence[PeriodKey]) -> dict[PeriodKey, Decimal]:
    out: dict[PeriodKey, Decimal] = {k: Decimal(0) for k in periods}
    if not periods:
        return out
    rows = conn.execute(
        """SELECT r.customer_id, r.meter, r.period_start, sum(r.amount)
             FROM unnest(%b::text[], %b::text[], %b::timestamptz[]) AS k(c, m, ps)
             JOIN billing.rated_charges r
               ON r.customer_id = k.c AND r.meter = k.m AND r.period_start = k.ps
            GROUP BY r.customer_id, r.meter, r.period_start""",
        ([k[0] for k in periods], [k[1] for k in periods], [k[2] for k in periods]),
    ).fetchall()
    for c, m, p, s in rows:
        out[(c, m, p)] = s
    return out


@dataclass
class Step:
    """One new revision of a window: its state after the step and why it was made."""

    window_start: datetime
    state: WindowState
    source: str  # aggregated_usage.source: window | late_revision | late
    cause: str  # rated_charges.cause: window_fired | late_revision | late_event
    caused_by: str | None = None


def apply_batch(
    conn: psycopg.Connection,
    batch: Batch,
    *,
    consumer: str,
    books: PriceBooks,
    aggregations: Mapping[str, str],
    alert_rules: AlertRules | None = None,
) -> ApplyResult:
    """Apply one batch in one transaction (see the module docstring). Then, in the same
    transaction, the provisional spend of the periods it changed and their customers' alert rules
    (``sinks/alerts.py``; ``alert_rules`` caches the rules between batches)."""
    res = ApplyResult()
    firings = [w for w in batch.windows if w.source == "window"]
    folds = [w for w in batch.windows if w.source != "window"]
    if any(w.source != "late" for w in folds):
        raise ValueError("window changes are firings ('window') or re-rating folds ('late')")
    with conn.transaction():
        if batch.offsets:
            _check_offsets(conn, consumer, batch)
        books.refresh(conn)
        _create_temp_tables(conn)
        docs = list(batch.event_json) + [e.to_json() for e in batch.events]
        ingest = _ingest_events(conn, docs, res) if docs else EventIngest()
        for key in batch.dead_on_time:  # its window's firing counted it: it must not wait for it
            ingest.windows.setdefault(key, WindowIngest()).read_on_time += 1
        if batch.duplicates:
            res.duplicates = _insert_duplicates(conn, batch.duplicates)
        if res.events_inserted:
            _resolve_duplicates(conn)
        keys = {(c, m, ws) for c, m, ws in ingest.windows} | {
            (w.customer_id, w.meter, w.window_start) for w in batch.windows}
        if keys:
            periods = sorted({(c, m, _period_start(ws)) for c, m, ws in keys})
            lock_periods(conn, periods)  # every period of the batch at once, in a fixed order
            latest = _load_latest_windows(conn, periods, sorted(keys))
            steps = _event_steps(conn, ingest, firings, latest)
            _add_fold_steps(conn, steps, folds, latest)
            # the rater needs every window of a period it rates; most windows a batch touches are
            # still open (events read, not fired) and rate nothing
            current = load_period_windows(conn, sorted(pk for pk, ss in steps.items() if ss))
            _rate_steps(conn, steps, current, books, aggregations, res)
            # the rated periods' windows, latest revisions after this batch (provisional spend
            # reads the other periods' windows itself)
            rated = {pk: {ws: st.quantity(aggregations.get(pk[1], "sum")) for ws, st in current[pk].items()}
                     for pk in current}
            for pk, ss in steps.items():
                for s in sorted(ss, key=lambda s: (s.window_start, s.state.revision)):
                    rated[pk][s.window_start] = s.state.quantity(aggregations.get(pk[1], "sum"))
            res.alerts += len(after_batch(conn, periods, books, aggregations,
                                          alert_rules if alert_rules is not None else AlertRules(), rated))
        if batch.offsets:
            _store_offsets(conn, consumer, batch.offsets)
    return res


class StaleBatchError(RuntimeError):
    """The batch does not start where this consumer's stored offsets say it must: it was applied
    already, or another writer with the same consumer name is running."""


def _copy_text_lines(docs: Sequence[bytes]) -> bytes:
    """``docs`` as the lines of a one-column COPY in text format: a backslash, tab, CR and LF are
    escaped (JSON text holds the last three only as whitespace between tokens).
    A NUL byte, which no JSON text holds, separates them while escaping: one in a document would
    split its row and fail the COPY loudly."""
    if not docs:
        return b""
    body = b"\x00".join(docs)
    for raw, esc in ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\r", b"\\r"), (b"\n", b"\\n")):
        body = body.replace(raw, esc)
    return body.replace(b"\x00", b"\n") + b"\n"


@dataclass
class WindowIngest:
    """What one batch's event messages did to one window."""

    read_on_time: int = 0  # on-time event messages read (accepted or duplicate copies)
    qsum: Decimal = Decimal(0)  # Σ, count and max of the on-time events newly accepted
    qcount: int = 0
    qmax: Decimal = Decimal(0)
    late: list[tuple[str, Decimal]] = field(default_factory=list)  # newly accepted late events, in order
    window_end: datetime | None = None  # as the event messages say


@dataclass
class EventIngest:
    windows: dict[WindowKey, WindowIngest] = field(default_factory=dict)


# the batch's copies that were not inserted: duplicates of an id accepted before
# (the lookups of the accepted copy below are one index probe per duplicate: OFFSET 0 keeps the
# planner from turning them into a scan of usage_events, which it does when its statistics lag)
_DUP_COPIES = """WITH ledger_ev_dup AS (
    SELECT l.* FROM ledger_ev l
     WHERE NOT (l.first_copy AND EXISTS (SELECT 1 FROM ledger_ev_new n WHERE n.event_id = l.event_id)))
"""


def _create_temp_tables(conn: psycopg.Connection) -> None:
    """The batch's staging table of event messages (per session, emptied at every commit)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS ledger_event_json_in (seq bigserial, doc text) "
                 "ON COMMIT DELETE ROWS")


# the JSON fields of an event message (jobs/flink/metering.py LEDGER_COLUMNS) as Postgres reads them
_EVENT_RECORD = """json_to_record(doc::json) AS r(event_id text, customer_id text, meter text,
                    event_time_ms bigint, ingestion_time_ms bigint, quantity text, properties text,
                    window_start_ms bigint, window_end_ms bigint, lateness text, source text,
                    src_topic text, src_partition integer, src_offset bigint)"""

# ONE statement per batch that reads the JSON once: parse the messages, insert the first copy of
# every id (ON CONFLICT: an id accepted before is not inserted), and sum up per window what the
# messages did (kind 'w': on-time messages read; Σ, count, max of the on-time events; kind 'l':
# each late event, with its position). The sums count every message as newly accepted, which is
# exact when the insert took every message (``inserted`` = the number of messages: the batch
# holds no duplicate) — every batch of a normal run, Flink's state being the first filter.
# Otherwise the caller discards them and redoes the per-copy accounting from ``inserted_ids``
# (computed only then) in :func:`_ingest_duplicates`.
_INGEST = """WITH r AS MATERIALIZED (
    SELECT seq, r.event_id, r.customer_id, r.meter, r.event_time_ms, r.ingestion_time_ms,
           r.quantity::numeric AS quantity, r.properties, r.window_start_ms, r.window_end_ms,
           coalesce(r.lateness, 'on_time') AS lateness, coalesce(r.source, 'stream') AS source,
           r.src_topic, r.src_partition, r.src_offset
      FROM ledger_event_json_in, """ + _EVENT_RECORD + """),
  ins AS (
    INSERT INTO billing.usage_events (event_id, customer_id, meter, event_time, ingestion_time,
           quantity, properties, window_start, source, kafka_topic, kafka_partition, kafka_offset)
    SELECT DISTINCT ON (event_id) event_id, customer_id, meter,
           timestamptz 'epoch' + event_time_ms * interval '1 millisecond',
           timestamptz 'epoch' + ingestion_time_ms * interval '1 millisecond',
           quantity, properties::jsonb,
           timestamptz 'epoch' + window_start_ms * interval '1 millisecond',
           source, src_topic, src_partition, src_offset
      FROM r ORDER BY event_id, seq
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id),
  n AS (SELECT count(*) AS inserted FROM ins)
SELECT w.*, n.inserted,
       CASE WHEN n.inserted <> %(docs)s THEN (SELECT array_agg(event_id) FROM ins) END
  FROM (SELECT 'w' AS kind, customer_id, meter, window_start_ms, max(window_end_ms) AS window_end_ms,
               count(*) FILTER (WHERE lateness = 'on_time') AS read,
               coalesce(sum(quantity) FILTER (WHERE lateness = 'on_time'), 0) AS qsum,
               count(*) FILTER (WHERE lateness = 'on_time') AS qcount,
               coalesce(max(quantity) FILTER (WHERE lateness = 'on_time'), 0) AS qmax,
               NULL::text AS event_id
          FROM r GROUP BY customer_id, meter, window_start_ms
        UNION ALL
        SELECT 'l', customer_id, meter, window_start_ms, seq, NULL, quantity, NULL, NULL, event_id
          FROM r WHERE lateness = 'late') w, n"""


def _ingest_events(conn: psycopg.Connection, docs: Sequence[bytes], res: ApplyResult) -> EventIngest:
    """Insert the batch's accepted events from their ledger messages (Postgres reads the JSON
    fields: instants from integer milliseconds, the quantity from its decimal text, properties as
    jsonb) and decide, durably, which are duplicates.

    A copy whose event_id is already in ``usage_events`` (from an earlier batch, run or job, or an
    earlier copy in this batch) is a duplicate, whatever Flink's dedup state knew: it is counted
    in ``duplicate_counts`` (source ``ledger``), recorded in ``event_id_conflicts`` when its content
    differs from the accepted copy (the first copy wins), and never counted in a window. Returns,
    per window, the on-time messages read and the newly accepted on-time and late events.

    Cost (docs/PERFORMANCE.md): a batch without duplicates — every batch of a normal run — is one
    COPY and one statement that reads the JSON once; a batch with duplicates reads it again in
    :func:`_ingest_duplicates`."""
    with conn.cursor().copy("COPY ledger_event_json_in (doc) FROM STDIN") as cp:
        cp.write(_copy_text_lines(docs))
    rows = conn.execute(_INGEST, {"docs": len(docs)}).fetchall()
    inserted = rows[0][-2] if rows else 0
    res.events_inserted += inserted
    if inserted != len(docs):  # a copy of an id accepted before, or an id twice in the batch
        return _ingest_duplicates(conn, rows[0][-1] or [])
    out = EventIngest()
    late = []
    for kind, c, m, ws_ms, we_ms, read, qsum, qcount, qmax, event_id, _, _ in rows:
        if kind == "w":
            out.windows[(c, m, from_epoch_ms(ws_ms))] = WindowIngest(
                read, qsum, qcount, qmax, window_end=from_epoch_ms(we_ms) if we_ms is not None else None)
        else:
            late.append((we_ms, c, m, ws_ms, event_id, qsum))  # we_ms: its position, seq
    for _, c, m, ws_ms, event_id, q in sorted(late, key=lambda x: x[0]):
        out.windows[(c, m, from_epoch_ms(ws_ms))].late.append((event_id, q))
    return out


def _ingest_duplicates(conn: psycopg.Connection, inserted_ids: Sequence[str]) -> EventIngest:
    """The batch (in ``ledger_event_json_in``, its events already inserted) holds duplicates;
    ``inserted_ids`` are the ids its insert took (from their first copy in the batch). Stage the
    parsed copies, count the duplicate copies (exactly once: the offsets commit with them),
    record the conflicts, and sum up the windows per copy. (Staging tables of this rare path
    only: dropped at its end, so an ordinary batch's commit does not empty them.)"""
    conn.execute(
        """CREATE TEMP TABLE ledger_ev ON COMMIT DROP AS
           SELECT seq, seq = min(seq) OVER (PARTITION BY r.event_id) AS first_copy, r.event_id,
                  r.customer_id, r.meter, r.event_time_ms, r.ingestion_time_ms,
                  r.quantity::numeric AS quantity, r.properties, r.window_start_ms, r.window_end_ms,
                  coalesce(r.lateness, 'on_time') AS lateness, coalesce(r.source, 'stream') AS source,
                  r.src_topic, r.src_partition, r.src_offset
             FROM ledger_event_json_in, """ + _EVENT_RECORD)
    conn.execute("CREATE TEMP TABLE ledger_ev_new (event_id text PRIMARY KEY) ON COMMIT DROP")
    conn.execute("INSERT INTO ledger_ev_new SELECT unnest(%b::text[])", (list(inserted_ids),))
    # the duplicate copies: counted (exactly once: the offsets commit with them), conflicts recorded
    conn.execute(
        _DUP_COPIES + """INSERT INTO billing.duplicate_counts (event_id, source, epoch_ms, duplicates)
           SELECT d.event_id, 'ledger', 0, count(*)
             FROM ledger_ev_dup d
             JOIN LATERAL (SELECT * FROM billing.usage_events x WHERE x.event_id = d.event_id OFFSET 0) u ON TRUE
            -- the same Kafka record read again (a job re-reading what it had already written out)
            -- is not another input: it is neither counted again nor a duplicate
            WHERE (u.kafka_topic, u.kafka_partition, u.kafka_offset)
                  IS DISTINCT FROM (d.src_topic, d.src_partition, d.src_offset)
               OR d.src_offset IS NULL
            GROUP BY d.event_id ORDER BY d.event_id
           ON CONFLICT (event_id, source, epoch_ms) DO UPDATE
             SET duplicates = billing.duplicate_counts.duplicates + EXCLUDED.duplicates, updated_at = now()""")
    conn.execute(
        _DUP_COPIES + """INSERT INTO billing.event_id_conflicts (event_id, customer_id, meter, event_time,
                      quantity, kafka_topic, kafka_partition, kafka_offset)
               SELECT d.event_id, d.customer_id, d.meter,
                      timestamptz 'epoch' + d.event_time_ms * interval '1 millisecond',
                      d.quantity, d.src_topic, d.src_partition, d.src_offset
                 FROM ledger_ev_dup d
                 JOIN LATERAL (SELECT * FROM billing.usage_events x WHERE x.event_id = d.event_id OFFSET 0) u ON TRUE
                WHERE (u.customer_id, u.meter, u.event_time, u.quantity)
                      IS DISTINCT FROM (d.customer_id, d.meter,
                        timestamptz 'epoch' + d.event_time_ms * interval '1 millisecond', d.quantity)
                ORDER BY d.seq""")
    out = _window_ingest(conn)
    conn.execute("DROP TABLE ledger_ev, ledger_ev_new")
    return out




def _window_ingest(conn: psycopg.Connection) -> EventIngest:
    """Per window of a batch with duplicates (staged in ``ledger_ev``, its inserted ids in
    ``ledger_ev_new``): the on-time messages read, the newly accepted on-time events' Σ / count /
    max, and the newly accepted late events in order."""
    new = "n.event_id IS NOT NULL"
    out = EventIngest()
    for c, m, ws_ms, we_ms, read, qsum, qcount, qmax in conn.execute(
        f"""SELECT l.customer_id, l.meter, l.window_start_ms, max(l.window_end_ms),
                  count(*) FILTER (WHERE l.lateness = 'on_time'),
                  coalesce(sum(l.quantity) FILTER (WHERE {new} AND l.lateness = 'on_time'), 0),
                  count(*) FILTER (WHERE {new} AND l.lateness = 'on_time'),
                  coalesce(max(l.quantity) FILTER (WHERE {new} AND l.lateness = 'on_time'), 0)
             FROM ledger_ev l LEFT JOIN ledger_ev_new n ON n.event_id = l.event_id AND l.first_copy
            GROUP BY 1, 2, 3"""):
        out.windows[(c, m, from_epoch_ms(ws_ms))] = WindowIngest(
            read, qsum, qcount, qmax, window_end=from_epoch_ms(we_ms) if we_ms is not None else None)
    for c, m, ws_ms, event_id, q in conn.execute(
        """SELECT l.customer_id, l.meter, l.window_start_ms, l.event_id, l.quantity
             FROM ledger_ev l JOIN ledger_ev_new n ON n.event_id = l.event_id
            WHERE l.first_copy AND l.lateness = 'late' ORDER BY l.seq"""):
        out.windows[(c, m, from_epoch_ms(ws_ms))].late.append((event_id, q))
    return out


def _insert_duplicates(conn: psycopg.Connection, dups: Sequence[DuplicateCount]) -> int:
    """The metering job's duplicate counters: absolute counts within one counting epoch (GREATEST),
    separate rows per epoch (a job started without state, or an id whose state expired, counts
    from zero again: those duplicates add up)."""
    latest: dict[tuple[str, str, int], int] = {}
    for d in dups:  # in topic order: the last count of an id wins
        latest[(d.event_id, d.source, d.epoch_ms)] = d.duplicates
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO billing.duplicate_counts (event_id, source, epoch_ms, duplicates)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (event_id, source, epoch_ms) DO UPDATE
                 SET duplicates = GREATEST(billing.duplicate_counts.duplicates, EXCLUDED.duplicates),
                     updated_at = now()""",
            [(k[0], k[1], k[2], v) for k, v in sorted(latest.items())],
        )
    return len(latest)


def _resolve_duplicates(conn: psycopg.Connection) -> None:
    """Fill in the customer, meter, time, window and period of duplicate counters that were stored
    before their accepted copy (V012): the job's counters and its events travel on different
    topics, so a counter can be read a batch before the event it counts. Reads only the rows still
    unresolved (a partial index), so a batch with none pays one empty index scan."""
    conn.execute(
        """UPDATE billing.duplicate_counts d
              SET customer_id = u.customer_id, meter = u.meter, event_time = u.event_time,
                  window_start = u.window_start,
                  period_start = date_trunc('month', u.window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             FROM billing.usage_events u
            WHERE d.customer_id IS NULL AND u.event_id = d.event_id""")


def _copy_insert(conn: psycopg.Connection, table: str, columns: Sequence[str],
                 rows: Sequence[tuple[Any, ...]]) -> None:
    """Append many rows to an append-only table: COPY into a temporary copy of it, then one
    INSERT … ON CONFLICT DO NOTHING (deterministic keys: a replay inserts nothing twice)."""
    from psycopg import sql

    tmp = sql.Identifier(f"ledger_{table}_in")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    conn.execute(sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ).format(tmp, sql.Identifier("billing", table)))
    with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(tmp, cols)) as cp:
        for row in rows:
            cp.write_row(row)
    conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
        sql.Identifier("billing", table), cols, cols, tmp))
    conn.execute(sql.SQL("TRUNCATE {}").format(tmp))


def _check_offsets(conn: psycopg.Connection, consumer: str, batch: Batch) -> None:
    check_offsets(conn, consumer, batch.start_offsets)


def partition_lock_keys(consumer: str, partitions: Iterable[tuple[str, int]]) -> list[int]:
    """The advisory lock keys (one bigint each) of these (consumer, topic, partition)s, sorted:
    every writer takes them in the same order, so two batches never deadlock on them."""
    keys = set()
    for t, p in partitions:
        h = hashlib.blake2b(f"meterflow-offsets\x1f{consumer}\x1f{t}\x1f{p}".encode(), digest_size=8)
        keys.add(int.from_bytes(h.digest(), "big", signed=True))
    return sorted(keys)


def check_offsets(conn: psycopg.Connection, consumer: str,
                  start_offsets: Mapping[tuple[str, int], int]) -> None:
    """Lock the batch's partitions of this consumer and refuse a batch that was applied already.

    One advisory transaction lock per (consumer, topic, partition): N writers of one consumer
    name apply batches of different partitions in parallel, and two writers that both believe
    they own a partition (during a rebalance) take turns; the second then finds the offsets
    moved past its batch (StaleBatchError). (Offsets of a transactional topic have gaps — commit
    markers, aborted records — so a batch may start after the stored offset, never before it.)"""
    if not start_offsets:
        return
    parts = sorted(start_offsets)
    conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k",
                 (partition_lock_keys(consumer, parts),))
    stored = dict(
        ((t, p), o)
        for t, p, o in conn.execute(
            """SELECT o.topic, o.partition, o.next_offset FROM billing.ledger_offsets o
                 JOIN unnest(%s::text[], %s::int[]) AS x(t, p) ON o.topic = x.t AND o.partition = x.p
                WHERE o.consumer = %s""",
            ([t for t, _ in parts], [p for _, p in parts], consumer),
        ).fetchall()
    )
    for tp, start in sorted(start_offsets.items()):
        expected = stored.get(tp)
        if expected is not None and start < expected:
            raise StaleBatchError(
                f"consumer {consumer!r}: batch starts at {tp[0]}[{tp[1]}]@{start} but the ledger "
                f"is at {expected}; not applying it twice"
            )


def _store_offsets(conn: psycopg.Connection, consumer: str, offsets: Mapping[tuple[str, int], int]) -> None:
    items = sorted(offsets.items())
    conn.execute(
        """INSERT INTO billing.ledger_offsets (consumer, topic, partition, next_offset)
           SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o)
           ON CONFLICT (consumer, topic, partition)
           DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()""",
        (consumer, [k[0] for k, _ in items], [k[1] for k, _ in items], [v for _, v in items]),
    )


def load_offsets(conn: psycopg.Connection, consumer: str) -> dict[tuple[str, int], int]:
    rows = conn.execute(
        "SELECT topic, partition, next_offset FROM billing.ledger_offsets WHERE consumer = %s",
        (consumer,),
    ).fetchall()
    return {(t, p): o for t, p, o in rows}


Accumulated = tuple[Decimal, int, Decimal]  # Σ, count, max of a window's accepted events


def _window_progress(conn: psycopg.Connection, ingest: EventIngest, firings: Sequence[WindowChange],
                     ) -> dict[WindowKey, tuple[int, int, datetime | None, Accumulated]]:
    """Add this batch's on-time event messages, firings and newly accepted events to each window's
    row of ``window_progress``; returns per window the batch touched: (events read, events fired,
    window end, the window's accepted events BEFORE this batch)."""
    read: dict[WindowKey, int] = defaultdict(int)
    fired: dict[WindowKey, int] = defaultdict(int)
    end: dict[WindowKey, datetime] = {}
    acc: dict[WindowKey, list] = {}
    for k, w in ingest.windows.items():
        read[k] += w.read_on_time
        qs = [q for _, q in w.late]
        acc[k] = [w.qsum + sum(qs, Decimal(0)), w.qcount + len(qs), max([w.qmax, *qs])]
    for f in firings:
        k = (f.customer_id, f.meter, f.window_start)
        fired[k] += f.qcount
        end[k] = f.window_end
    keys = sorted(set(read) | set(fired))
    if not keys:
        return {}
    zero: Accumulated = (Decimal(0), 0, Decimal(0))
    # The keys travel as one JSON document (orjson, C speed; Postgres parses it in C): a batch
    # touches thousands of windows, and psycopg dumps array parameters element by element in
    # Python (9 arrays of 20k elements: ~50 ms of the writer's CPU per batch, JSON ~20 ms).
    doc = orjson.dumps([(k[0], k[1], k[2], end.get(k), read.get(k, 0), fired.get(k, 0), str(qs), qc, str(qm))
                        for k in keys for qs, qc, qm in (acc.get(k, zero),)])
    # One statement. The old accumulators: a sub-select of RETURNING runs in the statement's
    # snapshot, so it reads each row as it was before this upsert (NULL: the row is new), one
    # primary-key probe per window (a join with the upserted rows was planned as a hash of the
    # whole table, or, its input's size unknown, as a nested loop over both: quadratic).
    rows = conn.execute(
        """INSERT INTO billing.window_progress AS p (customer_id, meter, window_start, window_end,
                  events_read, events_fired, qsum, qcount, qmax)
           SELECT k->>0, k->>1, (k->>2)::timestamptz, (k->>3)::timestamptz, (k->>4)::bigint,
                  (k->>5)::bigint, (k->>6)::numeric, (k->>7)::bigint, (k->>8)::numeric
             FROM json_array_elements(%s::json) AS k
           ON CONFLICT (customer_id, meter, window_start) DO UPDATE
             SET events_read = p.events_read + EXCLUDED.events_read,
                 events_fired = p.events_fired + EXCLUDED.events_fired,
                 window_end = coalesce(EXCLUDED.window_end, p.window_end),
                 qsum = p.qsum + EXCLUDED.qsum, qcount = p.qcount + EXCLUDED.qcount,
                 qmax = greatest(p.qmax, EXCLUDED.qmax), updated_at = now()
           RETURNING customer_id, meter, window_start, events_read, events_fired, window_end,
                     (SELECT ARRAY[o.qsum, o.qcount, o.qmax] FROM billing.window_progress o
                       WHERE o.customer_id = p.customer_id AND o.meter = p.meter
                         AND o.window_start = p.window_start)""",
        (doc.decode(),),
    ).fetchall()
    return {(c, m, ws): (r, f, we, zero if old is None else (old[0], int(old[1]), old[2]))
            for c, m, ws, r, f, we, old in rows}


def _add_accepted(conn: psycopg.Connection, parts: Mapping[WindowKey, tuple[datetime, Decimal, int, Decimal]],
                  ) -> dict[WindowKey, Accumulated]:
    """Add newly accepted events (the re-rating job's) to their windows' accumulated Σ, count and
    max; returns the windows' new values."""
    keys = sorted(parts)
    if not keys:
        return {}
    rows = conn.execute(
        """INSERT INTO billing.window_progress AS p (customer_id, meter, window_start, window_end,
                  qsum, qcount, qmax)
           SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[],
                                %b::text[]::numeric[], %b::bigint[], %b::text[]::numeric[])
           ON CONFLICT (customer_id, meter, window_start) DO UPDATE
             SET qsum = p.qsum + EXCLUDED.qsum, qcount = p.qcount + EXCLUDED.qcount,
                 qmax = greatest(p.qmax, EXCLUDED.qmax), updated_at = now()
           RETURNING customer_id, meter, window_start, qsum, qcount, qmax""",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [parts[k][0] for k in keys],
         [str(parts[k][1]) for k in keys], [parts[k][2] for k in keys], [str(parts[k][3]) for k in keys]),
    ).fetchall()
    return {(c, m, ws): (qs, qc, qm) for c, m, ws, qs, qc, qm in rows}


def _plus(s: WindowState, qsum: Decimal, qcount: int, qmax: Decimal) -> WindowState:
    return WindowState(s.window_end, s.qsum + qsum, s.qcount + qcount, max(s.qmax, qmax), s.revision + 1)


def _event_steps(conn: psycopg.Connection, ingest: EventIngest, firings: Sequence[WindowChange],
                 current: Mapping[PeriodKey, Mapping[datetime, WindowState]]) -> dict[PeriodKey, list[Step]]:
    """The revisions the batch's events and firings make, per period.

    A window's quantities are always those of its accepted events in ``usage_events``: a copy that
    Flink counted but Postgres found already accepted adds nothing. A window is first rated when
    the metering job has fired it and the writer has read every on-time event the firing counted
    (its firing message may be read before some of them); after that, every newly accepted event
    of the window makes a new revision: the on-time events of a later run's firing together, each
    late event within allowed lateness alone (Flink fires the window again for each)."""
    progress = _window_progress(conn, ingest, firings)
    todo: list[tuple[WindowKey, WindowState | None, datetime, bool]] = []  # (…, fires now)
    for key in sorted(set(progress) | set(ingest.windows)):
        c, m, ws = key
        latest = current[(c, m, _period_start(ws))].get(ws)
        w = ingest.windows.get(key)
        if latest is not None:
            if w is not None and (w.qcount or w.late):
                todo.append((key, latest, latest.window_end, False))
            continue
        read, fired, we, _ = progress.get(key, (0, 0, None, None))
        if fired and read >= fired and we is not None:  # fired, and every event it counted is read
            todo.append((key, None, we, True))
        elif not fired and w is not None and w.late and w.window_end is not None:
            # only late events so far: Flink fires a window whose first element is late at once
            todo.append((key, None, w.window_end, False))
    steps: dict[PeriodKey, list[Step]] = defaultdict(list)
    for key, latest, we, fires in todo:
        c, m, ws = key
        qsum, qcount, qmax = progress[key][3]  # the window's accepted events before this batch
        state = WindowState(we, qsum, qcount, qmax, latest.revision if latest else 0)
        w = ingest.windows.get(key) or WindowIngest()
        out = steps[(c, m, _period_start(ws))]
        if latest is None and not fires:  # rated at its first late event (below)
            state = _plus(state, w.qsum, w.qcount, w.qmax)
            state.revision -= 1
        elif fires or w.qcount:
            state = _plus(state, w.qsum, w.qcount, w.qmax)
            if state.qcount:
                out.append(Step(ws, state, "window", "window_fired") if fires
                           else Step(ws, state, "late_revision", "late_revision"))
            else:
                state.revision -= 1  # the firing counted only duplicates: nothing to record
        for event_id, q in w.late:
            state = _plus(state, q, 1, q)
            out.append(Step(ws, state, "late_revision", "late_revision", event_id))
    return steps


def _add_fold_steps(conn: psycopg.Connection, steps: dict[PeriodKey, list[Step]],
                    folds: Sequence[WindowChange],
                    current: Mapping[PeriodKey, Mapping[datetime, WindowState]]) -> None:
    """The re-rating job's partials: the late events it newly accepted (already inserted in this
    transaction) make one revision per window and batch (source ``late``, cause ``late_event``),
    with the window's quantities read from its accepted rows like every other revision — so a
    window whose on-time events were read but whose firing was not yet is complete too."""
    by_window: dict[WindowKey, list[WindowChange]] = defaultdict(list)
    for ch in folds:
        by_window[(ch.customer_id, ch.meter, ch.window_start)].append(ch)
    truth = _add_accepted(conn, {k: (chs[0].window_end, sum((ch.qsum for ch in chs), Decimal(0)),
                                     sum(ch.qcount for ch in chs), max(ch.qmax for ch in chs))
                                 for k, chs in by_window.items()})
    for (c, m, ws), chs in sorted(by_window.items()):
        pk = (c, m, _period_start(ws))
        earlier = [s for s in steps.get(pk, ()) if s.window_start == ws]
        state = earlier[-1].state if earlier else current[pk].get(ws)
        qsum, qcount, qmax = truth[(c, m, ws)]
        if state is not None and (qsum, qcount, qmax) == (state.qsum, state.qcount, state.qmax):
            continue
        we = state.window_end if state is not None else chs[0].window_end
        new = WindowState(we, qsum, qcount, qmax, (state.revision if state else 0) + 1)
        caused_by = next((ch.caused_by for ch in reversed(chs) if ch.caused_by), None)
        steps[pk].append(Step(ws, new, "late", "late_event", caused_by))


def _rate_steps(conn: psycopg.Connection, steps: Mapping[PeriodKey, Sequence[Step]],
                current: Mapping[PeriodKey, Mapping[datetime, WindowState]], books: PriceBooks,
                aggregations: Mapping[str, str], res: ApplyResult) -> None:
    """Record the revisions and rate them: per (customer, meter, period), a rater restored from
    Postgres (the latest revision of every window, Σ charges recorded) prices each step in window
    order and the delta charge is appended; a period that cannot be rated gets rating_errors rows."""
    periods = sorted(pk for pk, ss in steps.items() if ss)
    charged = load_charged(conn, periods)
    revision_rows: list[tuple[Any, ...]] = []
    charge_rows: list[tuple[Any, ...]] = []
    error_rows: list[tuple[Any, ...]] = []
    for pk in periods:
        c, m, ps = pk
        agg = aggregations.get(m, "sum")
        ordered = sorted(steps[pk], key=lambda s: (s.window_start, s.state.revision))
        for s in ordered:
            st = s.state
            revision_rows.append((c, m, s.window_start, st.window_end, st.revision, st.quantity(agg),
                                  st.qcount, st.qsum, st.qmax, s.source))
        try:
            rater = PeriodRater(
                books.book_for(c), c, m, ps, aggregation_of(agg),
                windows={ws: w.quantity(agg) for ws, w in current[pk].items()},
                charged=charged[pk],
            )
            for s in ordered:
                st = s.state
                ch = rater.update(s.window_start, st.window_end, st.quantity(agg), cause=s.cause,
                                  revision=st.revision)
                if ch is None:
                    continue
                charge_rows.append(
                    (ch.charge_id, c, m, ps, s.window_start, st.window_end, st.revision, ch.currency,
                     ch.quantity_delta, ch.amount, ch.price_book_id, ch.price_version,
                     orjson.dumps(ch.calculation, default=str).decode(), s.cause, s.caused_by)
                )
        except (RatingError, PricingError) as e:
            code = getattr(e, "code", None) or type(e).__name__
            for s in ordered:
                error_rows.append((c, m, ps, s.window_start, s.state.revision, code, str(e)[:2000]))
            log.warning("cannot rate %s/%s period %s: %s", c, m, ps.date(), e)

    if revision_rows:
        _copy_insert(conn, "aggregated_usage", (
            "customer_id", "meter", "window_start", "window_end", "revision", "quantity",
            "event_count", "qsum", "qmax", "source"), revision_rows)
        res.revisions += len(revision_rows)
        _mark_counted(conn, {pk: steps[pk] for pk in periods})
    if charge_rows:
        _copy_insert(conn, "rated_charges", (
            "charge_id", "customer_id", "meter", "period_start", "window_start", "window_end",
            "revision", "currency", "quantity_delta", "amount", "price_book_id", "price_version",
            "calculation", "cause", "caused_by"), charge_rows)
        res.charges += len(charge_rows)
    if error_rows:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO billing.rating_errors (customer_id, meter, period_start, window_start,
                          revision, error_code, message) VALUES (%s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT DO NOTHING""",
                error_rows,
            )
        res.rating_errors += len(error_rows)


def _mark_counted(conn: psycopg.Connection, steps: Mapping[PeriodKey, Sequence[Step]]) -> None:
    """Record on accepted events the revision that first counted them (``usage_events.
    counted_revision``, V009) in the transaction that records the revisions, so that "which
    events made this charge" is an exact join (``billing.v_charge_events``).

    Per window of the batch: a late event within allowed lateness has a step of its own (and is
    marked ``late_within``); an event the re-rating job folded in (source ``late``) is counted by
    the window's fold step; every other event not counted yet (on-time events read before or
    with the firing, or of a later run) by the window's first step of the batch, whose state
    holds every event accepted before it.

    Cost: NULL means "counted by the window's first revision" (once the window has one), and
    that is every on-time event of a window's first firing — nearly all events — so only the
    events counted by a later revision, and late-within ones, are updated: a few rows per
    batch, never a second write of every event. Which NULL rows of a window that already had
    revisions are new (this batch's) rather than revision 1's is told by their inserting
    transaction being this one."""
    late_ids: list[str] = []
    late_revs: list[int] = []
    first: dict[WindowKey, int] = {}
    fold: dict[WindowKey, int] = {}
    for (c, m, _), ss in steps.items():
        for s in ss:
            key = (c, m, s.window_start)
            rev = s.state.revision
            first[key] = min(first.get(key, rev), rev)
            if s.source == "late":
                fold[key] = max(fold.get(key, rev), rev)
            elif s.source == "late_revision" and s.caused_by is not None:  # one late event's step
                late_ids.append(s.caused_by)
                late_revs.append(rev)
    if late_ids:
        conn.execute(
            """UPDATE billing.usage_events u SET counted_revision = x.rev, late_within = true
                 FROM unnest(%s::text[], %s::int[]) AS x(id, rev)
                WHERE u.event_id = x.id AND u.counted_revision IS NULL""",
            (late_ids, late_revs))
    keys = sorted(k for k in first if first[k] > 1 or fold.get(k, 1) > 1)
    if keys:
        conn.execute(
            """UPDATE billing.usage_events u
                  SET counted_revision = CASE WHEN u.source = 'late' AND x.fold IS NOT NULL
                                              THEN x.fold ELSE x.first END
                 FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::int[], %s::int[])
                        AS x(c, m, ws, first, fold)
                WHERE u.customer_id = x.c AND u.meter = x.m AND u.window_start = x.ws
                  AND u.counted_revision IS NULL
                  AND CASE WHEN u.source = 'late' AND x.fold IS NOT NULL THEN x.fold ELSE x.first END > 1
                  -- inserted by this transaction (a visible row whose inserter is in progress is
                  -- ours, savepoints included); the window's older NULL rows are revision 1's
                  AND pg_xact_status((((pg_current_xact_id()::text::bigint >> 32) << 32)
                                      | u.xmin::text::bigint)::text::xid8) = 'in progress'""",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
             [first[k] for k in keys], [fold.get(k) for k in keys]))
