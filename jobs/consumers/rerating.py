"""The re-rating job: folds events beyond allowed lateness back in, and re-rates a scope on demand.

Two modes (docs/RERATING.md has the long form):

* **Streaming** (``meterflow run rerating [--bounded]``): consumes ``usage-events-late`` (the
  metering job's side output, read_committed) in batches. In ONE Postgres transaction per batch:
  the late events are inserted into ``usage_events`` with source ``late`` (an event id already
  there is a duplicate, counted in ``duplicate_counts`` with source ``late``); the NEW ones are
  summed per window into one partial per window (a burst of late events for a window gives one
  revision); the partials go through the ledger (:func:`sinks.ledger.apply_batch`): per-period
  advisory locks, a new revision (source ``late``), re-rating of the period from what Postgres
  holds, the delta charge (cause ``late_event``); and the consumer offsets are stored. Invalid
  records of the late topic go to the DLQ topic before the batch commits (at-least-once there).
* **Scope** (``meterflow rerate --customer C --meter M --from D --to D --reason R``): recomputes
  the scope's windows from ``usage_events``, appends a revision (source ``rerate``) where a window
  differs, and per (customer, meter, period) one charge (cause ``rerate``) of
  ``Rate(period, current price versions) − Σ charged`` when it is not zero. Idempotent.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from jobs.progress import Progress, progress_of
from pricing.charges import charge_id as make_charge_id
from pricing.errors import PricingError
from pricing.periods import isoformat_utc, period_end, period_start
from pricing.rater import PeriodRater, aggregation_of, rate_windows
from schemas.config import Aggregation, Settings
from schemas.records import (
    InvalidLate,
    LedgerEvent,
    WindowChange,
    WindowSource,
    dead_letter_record,
    parse_late,
)
from sinks.alerts import AlertRules, after_batch
from sinks.db import scalar
from sinks.ledger import (
    Batch,
    PeriodKey,
    StaleBatchError,
    apply_batch,
    check_offsets,
    load_charged,
    load_offsets,
    load_period_windows,
    lock_periods,
)
from sinks.pricebook_store import PriceBooks, RatingError

log = logging.getLogger("meterflow.rerating")

RERATING_CONSUMER = "rerating-late"
# --- applying a batch of late events ---------------------------------------------------------


@dataclass
class LateResult:
    late_events: int = 0  # records read (valid)
    folded_in: int = 0  # new events inserted and folded into windows
    duplicates: int = 0  # late records whose event id was already known
    invalid: int = 0  # sent to the DLQ
    revisions: int = 0
    charges: int = 0
    rating_errors: int = 0
    batches: int = 0

    def add(self, o: LateResult) -> None:
        for f in self.__dataclass_fields__:
            setattr(self, f, getattr(self, f) + getattr(o, f))


def window_partials(events: Sequence[LedgerEvent], window_size: timedelta,
                    batch_ref: str | None = None) -> list[WindowChange]:
    """The new late events of a batch, summed per window: ONE partial per window (sum, count and
    max), caused_by the event id when it is a single event, else ``batch_ref``."""
    groups: dict[tuple[str, str, datetime], list[LedgerEvent]] = defaultdict(list)
    for e in events:
        groups[(e.customer_id, e.meter, e.window_start)].append(e)
    out = []
    for (c, m, ws), evs in sorted(groups.items()):
        caused_by = evs[0].event_id if len(evs) == 1 else (
            f"{batch_ref or 'late-batch'}: {len(evs)} late events {min(e.event_id for e in evs)}"
            f"..{max(e.event_id for e in evs)}")[:500]
        out.append(WindowChange(
            sign=1, customer_id=c, meter=m, window_start=ws, window_end=ws + window_size,
            qsum=sum((e.quantity for e in evs), Decimal(0)), qcount=len(evs),
            qmax=max(e.quantity for e in evs), source=WindowSource.LATE, caused_by=caused_by,
        ))
    return out


def _insert_late_events(conn: psycopg.Connection, events: Sequence[LedgerEvent]) -> set[str]:
    """Insert (ON CONFLICT DO NOTHING); return the ids that were new. A concurrent insert of the
    same id by another writer blocks until that one commits, then counts as a conflict here."""
    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS rerating_late_in (
             seq integer, event_id text, customer_id text, meter text, event_time timestamptz,
             ingestion_time timestamptz, quantity numeric, properties jsonb, window_start timestamptz,
             kafka_topic text, kafka_partition integer, kafka_offset bigint
           ) ON COMMIT DELETE ROWS"""
    )
    with conn.cursor().copy(
        "COPY rerating_late_in (seq, event_id, customer_id, meter, event_time, ingestion_time, quantity,"
        " properties, window_start, kafka_topic, kafka_partition, kafka_offset) FROM STDIN"
    ) as cp:
        for i, e in enumerate(events):
            cp.write_row((i, e.event_id, e.customer_id, e.meter, e.event_time, e.ingestion_time,
                          e.quantity, e.properties, e.window_start, e.kafka_topic, e.kafka_partition,
                          e.kafka_offset))
    rows = conn.execute(
        """INSERT INTO billing.usage_events (event_id, customer_id, meter, event_time, ingestion_time,
                  quantity, properties, window_start, source, kafka_topic, kafka_partition, kafka_offset)
           SELECT event_id, customer_id, meter, event_time, ingestion_time, quantity, properties,
                  window_start, 'late', kafka_topic, kafka_partition, kafka_offset
             FROM (SELECT DISTINCT ON (event_id) * FROM rerating_late_in ORDER BY event_id, seq) f
            ORDER BY event_id
           ON CONFLICT (event_id) DO NOTHING
           RETURNING event_id"""
    ).fetchall()
    conn.execute("TRUNCATE rerating_late_in")
    return {r[0] for r in rows}


def _count_late_duplicates(conn: psycopg.Connection, counts: Mapping[str, int]) -> None:
    """Add to the 'late' duplicate counters (exactly once: the offsets commit with them)."""
    if not counts:
        return
    items = sorted(counts.items())
    conn.execute(
        """INSERT INTO billing.duplicate_counts (event_id, source, epoch_ms, duplicates)
           SELECT e, 'late', 0, n FROM unnest(%s::text[], %s::int[]) AS x(e, n)
           ON CONFLICT (event_id, source, epoch_ms) DO UPDATE
             SET duplicates = billing.duplicate_counts.duplicates + EXCLUDED.duplicates,
                 updated_at = now()""",
        ([k for k, _ in items], [v for _, v in items]),
    )


def apply_late_batch(
    conn: psycopg.Connection,
    events: Sequence[LedgerEvent],
    *,
    consumer: str,
    books: PriceBooks,
    aggregations: Mapping[str, Aggregation],
    window_size: timedelta,
    offsets: Mapping[tuple[str, int], int] | None = None,
    start_offsets: Mapping[tuple[str, int], int] | None = None,
    batch_ref: str | None = None,
    before_commit: Callable[[], None] | None = None,
) -> LateResult:
    """Fold a batch of late events in, in ONE transaction (see the module docstring)."""
    res = LateResult(late_events=len(events), batches=1)
    batch = Batch(offsets=dict(offsets or {}), start_offsets=dict(start_offsets or {}))
    with conn.transaction():
        if batch.offsets:
            check_offsets(conn, consumer, batch.start_offsets)  # serialize this consumer, refuse a replay
        new_ids = _insert_late_events(conn, events) if events else set()
        seen: set[str] = set()
        new_events: list[LedgerEvent] = []
        dups: dict[str, int] = defaultdict(int)
        for e in events:
            if e.event_id in new_ids and e.event_id not in seen:
                seen.add(e.event_id)
                new_events.append(e)
            else:
                dups[e.event_id] += 1
        _count_late_duplicates(conn, dups)
        res.folded_in = len(new_events)
        res.duplicates = sum(dups.values())
        batch.windows = window_partials(new_events, window_size, batch_ref)
        # lock the periods, restore the rating state from Postgres, revision + delta charge
        # (source 'late', cause 'late_event'), store the offsets: all in this transaction
        r = apply_batch(conn, batch, consumer=consumer, books=books, aggregations=aggregations)
        res.revisions, res.charges, res.rating_errors = r.revisions, r.charges, r.rating_errors
        if before_commit:
            before_commit()
    return res


# --- the streaming consumer ------------------------------------------------------------------


class LateStage:
    """What the consumer loop (:class:`sinks.batchloop.Loop`) calls with each poll of the late
    topic: parse the records, send the invalid ones to the DLQ topic, then fold the valid ones in
    with :func:`apply_late_batch` (one transaction that also checks and stores the offsets).

    The DLQ send is flushed before the batch's transaction commits: a crash in between sends them
    again on the retry (at-least-once on the DLQ), never loses them. A batch the loop retries (a
    deadlock, an outage) sends its invalid records again for the same reason."""

    def __init__(self, settings: Settings, consumer: str,
                 before_commit: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.consumer = consumer
        self.meters = frozenset(settings.meter_aggregations)
        self.window_ms = int(settings.time.window_size / timedelta(milliseconds=1))
        self.books = PriceBooks()
        self.before_commit = before_commit
        self.batches = 0  # batches attempted (numbers ``before_commit``'s calls)
        self._producer: Any = None

    def write(self, conn: psycopg.Connection, polled: Any) -> LateResult:
        events: list[LedgerEvent] = []
        invalid: list[InvalidLate] = []
        for msg in polled.records:
            item = parse_late(msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                              meters=self.meters, window_ms=self.window_ms)
            if isinstance(item, InvalidLate):
                invalid.append(item)
            else:
                events.append(item)
        if invalid:  # to the DLQ before the batch commits: at-least-once
            self._dead_letter(invalid)
        self.batches += 1
        ref = "late-batch " + ",".join(
            f"{t}[{p}]@{polled.start_offsets[(t, p)]}-{o - 1}"
            for (t, p), o in sorted(polled.next_offsets.items()))
        hook = functools.partial(self.before_commit, self.batches) if self.before_commit else None
        r = apply_late_batch(conn, events, consumer=self.consumer, books=self.books,
                             aggregations=self.settings.meter_aggregations,
                             window_size=self.settings.time.window_size,
                             offsets=polled.next_offsets, start_offsets=polled.start_offsets,
                             batch_ref=ref[:300], before_commit=hook)
        r.invalid = len(invalid)
        return r

    def _dead_letter(self, invalid: Sequence[InvalidLate]) -> None:
        from kafka import KafkaProducer

        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers,
                                           acks="all", retries=5, linger_ms=5)
        now_ms = int(time.time() * 1000)
        for inv in invalid:
            self._producer.send(self.settings.topics.dlq, value=dead_letter_record(inv, now_ms))
        self._producer.flush()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None


def run_rerating(
    settings: Settings,
    *,
    bounded: bool,
    consumer: str = RERATING_CONSUMER,
    max_batch: int = 20_000,
    linger_s: float = 1.0,
    poll_timeout_ms: int = 500,
    stop: Callable[[], bool] | None = None,
    on_batch: Callable[[LateResult], None] | None = None,
    before_commit: Callable[[int], None] | None = None,
    conn: psycopg.Connection | None = None,
    group_id: str | None = None,
    retry: Any = None,
    status: Any = None,
) -> LateResult:
    """Consume the late topic (read_committed) and fold it in, batch by batch, through the one
    batching loop (:class:`sinks.batchloop.Loop`, offsets in Postgres; this module supplies the
    stage, :class:`LateStage`).

    ``bounded``: stop once every partition reached the end offset it had at start.
    ``linger_s``: keep polling up to this long (or ``max_batch`` records) before applying, so a
    burst of late events for one window becomes one revision. ``before_commit(n)``: a test hook
    called inside the n-th batch's transaction, just before it commits.
    ``group_id``: join this Kafka consumer group and fold in only the partitions it assigns
    (N instances scale out, as the ledger writer does); None: read every partition (the only way
    for ``bounded``). ``retry``/``status``: as for :func:`jobs.consumers.ledger_writer.run_ledger`.
    """
    from sinks.batchloop import Loop, Postgres, RetryPolicy, Status
    from sinks.db import connect

    if conn is not None:
        given = conn

        def connect_fn() -> psycopg.Connection:
            if given.closed:
                raise psycopg.OperationalError("the re-rating consumer's connection was lost")
            return given
    else:
        def connect_fn() -> psycopg.Connection:
            return connect(settings, application_name="meterflow-rerating", jit=False)

    status = status or Status(None, consumer=consumer, group_id=group_id)
    pg = Postgres(connect_fn, retry or RetryPolicy(), status, stop=stop)
    stage = LateStage(settings, consumer, before_commit)
    total = LateResult()

    def on_write(r: LateResult, polled: Any) -> None:
        total.add(r)
        status.dead_letters_total += r.invalid
        log.info("late batch %d: %d events, %d new, %d duplicates, %d invalid, %d revisions, "
                 "%d charges", total.batches, r.late_events, r.folded_in, r.duplicates, r.invalid,
                 r.revisions, r.charges)
        if on_batch:
            on_batch(r)

    def offsets(c: psycopg.Connection, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        with c.transaction():
            stored = load_offsets(c, consumer)
        return {k: stored[k] for k in keys if k in stored}

    loop = Loop(bootstrap_servers=settings.kafka.bootstrap_servers, topics=[settings.topics.late],
                consumer=consumer, write=stage.write, load_offsets=offsets, postgres=pg,
                group_id=group_id, stale_errors=(StaleBatchError,), max_batch=max_batch,
                poll_timeout_ms=poll_timeout_ms, linger_s=linger_s)
    try:
        loop.run(bounded=bounded, stop=stop, on_write=on_write)
    finally:
        stage.close()
        if conn is None:
            pg.close()
    return total


# --- scope mode --------------------------------------------------------------------------------


@dataclass
class WindowDiff:
    customer_id: str
    meter: str
    window_start: datetime
    window_end: datetime
    old: tuple[Decimal, int, Decimal] | None  # qsum, count, qmax of the latest revision
    new: tuple[Decimal, int, Decimal]
    old_quantity: Decimal | None
    new_quantity: Decimal
    revision: int  # the revision that would be appended


@dataclass
class PeriodDiff:
    customer_id: str
    meter: str
    period_start: datetime
    charged: Decimal
    rate: Decimal
    windows: list[WindowDiff] = field(default_factory=list)
    charge_amount: Decimal = Decimal(0)
    charge_id: uuid.UUID | None = None
    charge_window: datetime | None = None
    sequence: int = 0
    error: str | None = None
    skipped_open: int = 0  # windows in scope still open in the metering job (not recomputed)


@dataclass
class RerateResult:
    periods: list[PeriodDiff] = field(default_factory=list)
    dry_run: bool = False

    @property
    def revisions(self) -> int:
        return sum(len(p.windows) for p in self.periods)

    @property
    def charges(self) -> int:
        return sum(1 for p in self.periods if p.charge_id is not None)

    @property
    def amount(self) -> Decimal:
        return sum((p.charge_amount for p in self.periods if p.charge_id is not None), Decimal(0))


def scope_periods(
    conn: psycopg.Connection, customer: str | None, meter: str | None, start: datetime, end: datetime
) -> list[PeriodKey]:
    """Every (customer, meter, period) with windows, events or charges overlapping [start, end)."""
    p0, p1 = period_start(start), period_end(end - timedelta(microseconds=1))
    rows = conn.execute(
        """SELECT DISTINCT customer_id, meter, window_start FROM (
             SELECT customer_id, meter, window_start FROM billing.usage_events
              WHERE window_start >= %(s)s AND window_start < %(e)s
             UNION ALL
             SELECT customer_id, meter, window_start FROM billing.aggregated_usage
              WHERE window_start >= %(s)s AND window_start < %(e)s
             UNION ALL
             SELECT customer_id, meter, window_start FROM billing.rated_charges
              WHERE period_start >= %(p0)s AND period_start < %(p1)s
                AND window_start >= %(s)s AND window_start < %(e)s
           ) x
           WHERE (%(c)s::text IS NULL OR customer_id = %(c)s) AND (%(m)s::text IS NULL OR meter = %(m)s)""",
        {"s": start, "e": end, "p0": p0, "p1": p1, "c": customer, "m": meter},
    ).fetchall()
    return sorted({(c, m, period_start(ws)) for c, m, ws in rows})


def _recompute(conn: psycopg.Connection, pk: PeriodKey, start: datetime, end: datetime
               ) -> dict[datetime, tuple[Decimal, int, Decimal]]:
    c, m, ps = pk
    lo, hi = max(start, ps), min(end, period_end(ps))
    rows = conn.execute(
        """SELECT window_start, sum(quantity), count(*), max(quantity) FROM billing.usage_events
            WHERE customer_id = %s AND meter = %s AND window_start >= %s AND window_start < %s
            GROUP BY window_start""",
        (c, m, lo, hi),
    ).fetchall()
    return {ws: (s, n, mx) for ws, s, n, mx in rows}


def _quantity(t: tuple[Decimal, int, Decimal], agg: str) -> Decimal:
    return Decimal(t[1]) if agg == "count" else (t[2] if agg == "max" else t[0])


def rerate_period(
    conn: psycopg.Connection,
    pk: PeriodKey,
    *,
    start: datetime,
    end: datetime,
    reason: str,
    books: PriceBooks,
    aggregations: Mapping[str, Aggregation],
    window_size: timedelta,
    settled_before: datetime,
    dry_run: bool,
) -> PeriodDiff:
    """Re-rate one (customer, meter, period) under its advisory lock, in the caller's transaction."""
    c, m, ps = pk
    agg = aggregations.get(m, "sum")
    lock_periods(conn, [pk])
    current = load_period_windows(conn, [pk])[pk]
    charged = load_charged(conn, [pk])[pk]
    recomputed = _recompute(conn, pk, start, end)
    diff = PeriodDiff(c, m, ps, charged, charged)
    final: dict[datetime, Decimal] = {ws: st.quantity(agg) for ws, st in current.items()}
    final_end = {ws: st.window_end for ws, st in current.items()}
    final_rev = {ws: st.revision for ws, st in current.items()}
    in_scope = sorted(ws for ws in set(current) | set(recomputed) if start <= ws < end)
    for ws in in_scope:
        we = current[ws].window_end if ws in current else ws + window_size
        if we > settled_before:  # the metering job may still be counting it: leave it alone
            diff.skipped_open += 1
            continue
        new = recomputed.get(ws, (Decimal(0), 0, Decimal(0)))
        st = current.get(ws)
        old = (st.qsum, st.qcount, st.qmax) if st else None
        if old == new or (old is None and new[1] == 0):
            continue
        rev = (st.revision if st else 0) + 1
        diff.windows.append(WindowDiff(c, m, ws, we, old, new, st.quantity(agg) if st else None,
                                       _quantity(new, agg), rev))
        final[ws], final_end[ws], final_rev[ws] = _quantity(new, agg), we, rev
    try:
        book = books.book_for(c)
        rater = PeriodRater(book, c, m, ps, aggregation_of(agg), windows=final, charged=charged)
        diff.rate = rater.rate
        if rater.rate != charged and final:
            # one charge per period, attributed to the first revised window (else the first
            # window of the scope, else of the period)
            ws = (diff.windows[0].window_start if diff.windows
                  else next((w for w in sorted(final) if start <= w < end), min(final)))
            seq = 1 + scalar(
                conn, "SELECT count(*) FROM billing.rated_charges WHERE customer_id = %s AND meter = %s "
                "AND period_start = %s AND cause = 'rerate'", (c, m, ps))
            ch = rater.update(ws, final_end[ws], final[ws], cause="rerate", revision=seq)
            assert ch is not None
            diff.charge_amount, diff.charge_window, diff.sequence = ch.amount, ws, seq
            diff.charge_id = make_charge_id(c, m, ps, ws, "rerate", seq)
            assert diff.charge_id == ch.charge_id
            calc = dict(ch.calculation)
            calc["rerate"] = {
                "reason": reason,
                "scope": [isoformat_utc(start), isoformat_utc(end)],
                "sequence": seq,
                "charged_before": str(charged),
                "rate_after": str(rater.rate),
                "price_versions": sorted({w.price_version for w in rate_windows(
                    book, m, final, aggregation=aggregation_of(agg), customer_id=c).windows}),
                "windows_revised": [
                    {"window_start": isoformat_utc(w.window_start), "revision": w.revision,
                     "quantity_before": None if w.old_quantity is None else str(w.old_quantity),
                     "quantity_after": str(w.new_quantity)} for w in diff.windows[:100]],
            }
            qdelta = sum(((w.new_quantity - (w.old_quantity or 0)) for w in diff.windows), Decimal(0))
            if agg == "max":
                qdelta = max(final.values()) - max([st.quantity(agg) for st in current.values()] or [Decimal(0)])
            row = (ch.charge_id, c, m, ps, ws, final_end[ws], final_rev[ws], ch.currency, qdelta,
                   ch.amount, ch.price_book_id, ch.price_version,
                   json.dumps(calc, separators=(",", ":"), default=str), "rerate", reason)
        else:
            row = None
    except (RatingError, PricingError, ValueError) as e:
        diff.error = f"{getattr(e, 'code', type(e).__name__)}: {e}"
        row = None
    if dry_run:
        return diff
    if diff.windows:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO billing.aggregated_usage (customer_id, meter, window_start, window_end,
                          revision, quantity, event_count, qsum, qmax, source)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'rerate')""",
                [(w.customer_id, w.meter, w.window_start, w.window_end, w.revision, w.new_quantity,
                  w.new[1], w.new[0], w.new[2]) for w in diff.windows],
            )
    if row is not None or diff.windows:  # provisional spend and alerts follow (docs/ALERTS.md)
        after_batch(conn, [pk], books, aggregations, AlertRules())
    if row is not None:
        conn.execute(
            """INSERT INTO billing.rated_charges (charge_id, customer_id, meter, period_start,
                      window_start, window_end, revision, currency, quantity_delta, amount,
                      price_book_id, price_version, calculation, cause, caused_by)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)""",
            row,
        )
    return diff


def rerate_scope(
    conn: psycopg.Connection,
    settings: Settings,
    *,
    customer: str | None,
    meter: str | None,
    date_from: date,
    date_to: date,
    reason: str,
    dry_run: bool = False,
    progress: Progress | bool | None = None,
    now: datetime | None = None,
    include_open: bool = False,
) -> RerateResult:
    """Re-rate the scope: windows starting in [date_from 00:00, date_to + 1 day 00:00) UTC; every
    (customer, meter, period) they touch is re-rated as a whole. One transaction per period."""
    if not reason.strip():
        raise ValueError("--reason is required (it is recorded on every charge)")
    if date_to < date_from:
        raise ValueError("--to is before --from")
    start = datetime(date_from.year, date_from.month, date_from.day, tzinfo=UTC)
    end = datetime(date_to.year, date_to.month, date_to.day, tzinfo=UTC) + timedelta(days=1)
    t = settings.time
    now = now or datetime.now(UTC)
    settled_before = (datetime.max.replace(tzinfo=UTC) if include_open
                      else now - t.allowed_lateness - t.max_out_of_orderness)
    books = PriceBooks()
    res = RerateResult(dry_run=dry_run)
    with conn.transaction():
        books.refresh(conn)
        periods = scope_periods(conn, customer, meter, start, end)
    bar = progress_of(progress)
    bar.start("re-rating periods", len(periods))
    try:
        for pk in periods:
            tx = conn.transaction(force_rollback=dry_run)
            with tx:
                res.periods.append(rerate_period(
                    conn, pk, start=start, end=end, reason=reason, books=books,
                    aggregations=settings.meter_aggregations, window_size=t.window_size,
                    settled_before=settled_before, dry_run=dry_run))
            bar.advance()
    finally:
        bar.finish()
    return res
