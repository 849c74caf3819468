"""The ledger writer on a real PostgreSQL: accepted events and window firings become revisions and
delta charges, exactly once; an event id is counted once, whatever copies arrive; and Σ charges per
(customer, meter, period) equals Rate over the final windows."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from pricing.book import price_book_from_data
from pricing.rater import rate_period
from pricing.reference import Customer
from schemas.records import DuplicateCount, DuplicateSource, LedgerEvent, WindowChange
from sinks.db import connect
from sinks.ledger import Batch, StaleBatchError, apply_batch
from sinks.pricebook_store import PriceBooks, store_customers, store_price_books

pytestmark = [pytest.mark.integration, pytest.mark.module_database]

H = timedelta(hours=1)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
BOOK = {
    "price_book_id": "std-usd",
    "currency": "USD",
    "versions": [
        {
            "name": "v1",
            "effective_from": "2026-01-01T00:00:00Z",
            "prices": [
                {"meter": "api_calls", "model": "tiered",
                 "tiers": [{"up_to": "1000", "unit_price": "0.10"}, {"unit_price": "0.08"}]},
                {"meter": "active_seats", "model": "flat", "unit_price": "5"},
            ],
        }
    ],
}
AGG = {"api_calls": "sum", "active_seats": "max"}


@pytest.fixture(scope="module")
def seed():
    """Seeds the one database the module's tests share."""
    return lambda conn: seed_prices(conn, BOOK, customers=["c1", "c2", "c3"])


def seed_prices(conn: psycopg.Connection, data: dict, customers: list[str]) -> None:
    """Load the book and its customers through the real stores (sinks/pricebook_store.py)."""
    book = price_book_from_data(data)
    store_price_books(conn, [book])
    store_customers(conn, [Customer(customer_id=c, price_book_id=book.price_book_id,
                                    currency=book.currency) for c in customers])


_ids = itertools.count()


def ev(c: str, m: str, ws: datetime, q: str, *, late: bool = False, event_id: str | None = None,
       minute: int = 0) -> LedgerEvent:
    """An accepted event's ledger message: on time, or late within allowed lateness."""
    n = next(_ids)
    t = ws + timedelta(minutes=minute)
    return LedgerEvent(event_id or f"{c}-{m}-{n}", c, m, t, Decimal(q), None, ws, t, "stream",
                         "usage-events", 0, n, "late" if late else "on_time", ws + H)


def firing(c: str, m: str, ws: datetime, events: list[LedgerEvent]) -> WindowChange:
    """The metering job's on-time aggregate of ``events`` (duplicate copies included: Flink's
    state may not know them)."""
    qs = [e.quantity for e in events]
    return WindowChange(1, c, m, ws, ws + H, sum(qs, Decimal(0)), len(qs), max(qs, default=Decimal(0)),
                        source="window")


def fire(c: str, m: str, ws: datetime, *quantities: str) -> list:
    """A window's on-time events and its firing, as the metering job writes them."""
    events = [ev(c, m, ws, q) for q in quantities]
    return [*events, firing(c, m, ws, events)]


def late(c: str, m: str, ws: datetime, q: str, event_id: str | None = None) -> LedgerEvent:
    """One late event within allowed lateness (Flink fires the window again)."""
    return ev(c, m, ws, q, late=True, event_id=event_id)


class Offsets:
    def __init__(self) -> None:
        self.next = 0

    def batch(self, items=(), events=()) -> Batch:
        """A batch of ledger messages (events and firings, in this order), the next offsets."""
        items = [*items, *events]
        n = len(items)
        b = Batch(events=[i for i in items if isinstance(i, LedgerEvent)],
                  windows=[i for i in items if isinstance(i, WindowChange)])
        b.start_offsets[("t", 0)] = self.next
        self.next += n
        b.offsets[("t", 0)] = self.next
        return b


def sums(conn: psycopg.Connection, customer: str, meter: str) -> tuple[dict[datetime, Decimal], Decimal]:
    windows = dict(conn.execute(
        """SELECT DISTINCT ON (window_start) window_start, quantity FROM aggregated_usage
            WHERE customer_id = %s AND meter = %s ORDER BY window_start, revision DESC""",
        (customer, meter)).fetchall())
    total = conn.execute("SELECT coalesce(sum(amount), 0) FROM rated_charges WHERE customer_id = %s AND meter = %s",
                         (customer, meter)).fetchone()[0]
    return windows, total


def test_a_first_firing_then_a_late_firing_give_two_revisions_and_charges_summing_to_rate(settings) -> None:
    book = price_book_from_data(BOOK)
    off = Offsets()
    with connect(settings) as conn:
        books = PriceBooks()
        r1 = apply_batch(conn, off.batch(fire("c1", "api_calls", NOV, *["100"] * 9)), consumer="t1",
                         books=books, aggregations=AGG)
        assert (r1.revisions, r1.charges) == (1, 1)
        r2 = apply_batch(conn, off.batch([late("c1", "api_calls", NOV, "334")]),
                         consumer="t1", books=books, aggregations=AGG)
        assert (r2.revisions, r2.charges) == (1, 1)
        rows = conn.execute(
            """SELECT revision, quantity, event_count, source FROM aggregated_usage
                WHERE customer_id = 'c1' ORDER BY revision""").fetchall()
        assert rows == [(1, Decimal("900"), 9, "window"), (2, Decimal("1234"), 10, "late_revision")]
        causes = conn.execute(
            "SELECT cause, amount FROM rated_charges WHERE customer_id = 'c1' ORDER BY revision").fetchall()
        assert [c for c, _ in causes] == ["window_fired", "late_revision"]
        assert causes[0][1] == Decimal("90")  # 900 units in the first tier at 0.10
        windows, total = sums(conn, "c1", "api_calls")
        assert total == Decimal("118.72")  # the seed example: 1,000 at 0.10 + 234 at 0.08
        assert total == rate_period(book, "api_calls", windows)


def test_a_batch_applied_twice_is_refused_and_changes_nothing(settings) -> None:
    off = Offsets()
    with connect(settings) as conn:
        books = PriceBooks()
        b = off.batch(fire("c2", "api_calls", NOV, "10"))
        apply_batch(conn, b, consumer="t2", books=books, aggregations=AGG)
        before = sums(conn, "c2", "api_calls")
        with pytest.raises(StaleBatchError):
            apply_batch(conn, b, consumer="t2", books=books, aggregations=AGG)
        assert sums(conn, "c2", "api_calls") == before


def test_windows_in_any_order_and_any_batching_give_sigma_charges_equal_to_rate(settings) -> None:
    """Order independence at the ledger: the same messages (events, firings, late events),
    shuffled and cut into batches differently, always end with Σ charges == Rate(final windows)
    — a firing read before its events waits for them."""
    book = price_book_from_data(BOOK)
    for seed in range(6):
        rnd = random.Random(seed)
        customer = f"order-{seed}"
        with connect(settings) as conn:
            conn.execute("INSERT INTO customers (customer_id, price_book_id, currency) VALUES (%s, 'std-usd', 'USD')",
                         (customer,))
            conn.commit()
            changes: list = []
            final: dict[datetime, Decimal] = {}
            for h in range(30):
                ws = NOV + h * H
                qs = [str(rnd.randint(0, 200)) for _ in range(rnd.randint(1, 3))]
                changes += fire(customer, "api_calls", ws, *qs)
                q = sum(map(Decimal, qs))
                for _ in range(rnd.choice([0, 0, 1, 3])):  # late events within lateness
                    extra = Decimal(rnd.randint(0, 50))
                    changes.append(late(customer, "api_calls", ws, str(extra)))
                    q += extra
                final[ws] = q
            # events, firings and late events arrive in any order, in batches of any size
            ordered = [changes[i] for i in sorted(range(len(changes)), key=lambda i: rnd.random())]
            off = Offsets()
            books = PriceBooks()
            i = 0
            while i < len(ordered):
                k = rnd.randint(1, 8)
                apply_batch(conn, off.batch(ordered[i:i + k]), consumer=f"order-{seed}", books=books,
                            aggregations=AGG)
                i += k
            windows, total = sums(conn, customer, "api_calls")
            assert windows == final, f"seed {seed}"
            assert total == rate_period(book, "api_calls", final), f"seed {seed}"


def test_a_max_meter_keeps_the_peak_of_the_window_and_of_the_period(settings) -> None:
    off = Offsets()
    with connect(settings) as conn:
        books = PriceBooks()
        apply_batch(conn, off.batch(fire("c3", "active_seats", NOV, "12", "10", "8")),
                    consumer="t3", books=books, aggregations=AGG)
        apply_batch(conn, off.batch([late("c3", "active_seats", NOV, "5")]),
                    consumer="t3", books=books, aggregations=AGG)  # a late event below the peak
        apply_batch(conn, off.batch(fire("c3", "active_seats", NOV + H, "20")),
                    consumer="t3", books=books, aggregations=AGG)
        windows, total = sums(conn, "c3", "active_seats")
        assert windows == {NOV: Decimal(12), NOV + H: Decimal(20)}
        assert total == Decimal(100)  # the period's peak, 20 seats at 5


def test_an_unpriced_customer_gets_a_rating_error_row_not_a_silent_zero(settings) -> None:
    off = Offsets()
    with connect(settings) as conn:
        r = apply_batch(conn, off.batch(fire("nobody", "api_calls", NOV, "5")),
                        consumer="t4", books=PriceBooks(), aggregations=AGG)
        assert (r.revisions, r.charges, r.rating_errors) == (1, 0, 1)
        code, = conn.execute("SELECT error_code FROM rating_errors WHERE customer_id = 'nobody'").fetchone()
        assert code == "customer_not_priced"
        assert conn.execute("SELECT count(*) FROM rated_charges WHERE customer_id = 'nobody'").fetchone()[0] == 0


def test_accepted_events_are_inserted_once_even_when_sent_twice(settings) -> None:
    e1 = LedgerEvent("e-1", "c1", "api_calls", NOV, Decimal("2.5"), '{"a": 1}', NOV, NOV, "stream",
                       "usage-events", 0, 7)
    off = Offsets()
    with connect(settings) as conn:
        resent = [dataclasses.replace(e1, kafka_offset=o) for o in (8, 9)]  # a producer's retries
        r1 = apply_batch(conn, off.batch(events=[e1, resent[0]]), consumer="t5", books=PriceBooks(),
                         aggregations=AGG)
        r2 = apply_batch(conn, off.batch(events=[resent[1], e1]), consumer="t5", books=PriceBooks(),
                         aggregations=AGG)
        assert (r1.events_inserted, r2.events_inserted) == (1, 0)
        row = conn.execute("SELECT quantity, properties FROM usage_events WHERE event_id = 'e-1'").fetchone()
        assert row == (Decimal("2.5"), {"a": 1})
        # the two re-sent records are duplicates, counted exactly once each; the same record
        # read again (e1 itself, at the same offset) is not another input: not a duplicate
        assert conn.execute("""SELECT source, duplicates FROM duplicate_counts
                                WHERE event_id = 'e-1'""").fetchall() == [("ledger", 2)]


def test_a_duplicate_counter_read_before_its_event_gets_the_events_customer_and_period(settings) -> None:
    """The job's duplicate counters carry only the event id and travel on their own topic, so a
    counter can be applied a batch before the event it counts (V012): it is filled in by the batch
    that inserts the event, and a counter applied after its event is filled in at once."""
    ws = NOV + 9 * H
    e = ev("c2", "api_calls", ws, "1", event_id="dup-early", minute=7)
    off = Offsets()
    with connect(settings) as conn:
        early = off.batch()
        early.duplicates = [DuplicateCount("dup-early", 1)]
        apply_batch(conn, early, consumer="t-dup", books=PriceBooks(), aggregations=AGG)
        row = ("SELECT customer_id, meter, event_time, window_start, period_start FROM duplicate_counts"
               " WHERE event_id = %s")
        assert conn.execute(row, ("dup-early",)).fetchall() == [(None, None, None, None, None)]
        apply_batch(conn, off.batch(events=[e]), consumer="t-dup", books=PriceBooks(), aggregations=AGG)
        assert conn.execute(row, ("dup-early",)).fetchall() == [("c2", "api_calls", e.event_time, ws, NOV)]
        later = off.batch()
        later.duplicates = [DuplicateCount("dup-early", 2, DuplicateSource.STREAM, epoch_ms=5)]
        apply_batch(conn, later, consumer="t-dup", books=PriceBooks(), aggregations=AGG)
        assert conn.execute(row, ("dup-early",)).fetchall() == [("c2", "api_calls", e.event_time, ws, NOV)] * 2
        # the analysts' per-customer question reads the rows themselves, through their index
        assert conn.execute("""SELECT customer_id, meter, period_start, duplicates FROM billing.v_duplicates
                                WHERE event_id = 'dup-early'""").fetchall() == [("c2", "api_calls", NOV, 3)]
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            """EXPLAIN SELECT meter, sum(duplicates) FROM billing.v_duplicates
                WHERE customer_id = 'c2' AND period_start = %s GROUP BY meter""", (NOV,)).fetchall())
        conn.execute("RESET enable_seqscan")
        assert "duplicate_counts_customer_idx" in plan


def test_a_first_firing_and_late_events_in_one_batch_give_one_revision_each_in_flink_order(settings) -> None:
    """Like Flink's window: the on-time firing, then one re-firing per late event — even when the
    late partial arrives before the window's aggregate in the same batch."""
    off = Offsets()
    ws = NOV + 5 * H
    batch = [late("c1", "api_calls", ws, "3", "late-a"), *fire("c1", "api_calls", ws, "6", "4"),
             late("c1", "api_calls", ws, "4", "late-b")]
    with connect(settings) as conn:
        r = apply_batch(conn, off.batch(batch), consumer="t6", books=PriceBooks(), aggregations=AGG)
        assert r.revisions == 3
        rows = conn.execute(
            """SELECT revision, quantity, event_count, source FROM aggregated_usage
                WHERE customer_id = 'c1' AND window_start = %s ORDER BY revision""", (ws,)).fetchall()
        assert rows == [(1, Decimal(10), 2, "window"), (2, Decimal(13), 3, "late_revision"),
                        (3, Decimal(17), 4, "late_revision")]
        causes = [c for (c,) in conn.execute(
            "SELECT caused_by FROM rated_charges WHERE customer_id = 'c1' AND window_start = %s ORDER BY revision",
            (ws,))]
        assert causes == [None, "late-a", "late-b"]


# Ledger messages of accepted events as the metering job writes them, with the values that could
# come out differently when Postgres reads the JSON instead of Python:
EVENT_MESSAGES = [
    # the producers' common case: integer quantity, flat properties
    dict(event_id="j-1", customer_id="c1", meter="api_calls", quantity="3", properties='{"region":"eu"}',
         event_time_ms=1793577600123, window_start_ms=1793577600000, ingestion_time_ms=1793577601999),
    # the smallest and a large decimal (no binary float on either path); no properties
    dict(event_id="j-2", customer_id="c1", meter="api_calls", quantity="0.000000000001", properties=None,
         event_time_ms=1793577600000, window_start_ms=1793577600000, ingestion_time_ms=1793577600001),
    dict(event_id="j-3", customer_id="c2", meter="api_calls", quantity="12345678901234567890.5",
         properties='{}', event_time_ms=1793581199999, window_start_ms=1793577600000,
         ingestion_time_ms=1793581200000),
    # escapes and non-ASCII in ids and properties: quotes, backslashes, a tab and a newline
    # written as JSON escapes, unicode; a nested object
    dict(event_id='j-"4"\\', customer_id="c-ü€", meter="api_calls", quantity="1",
         properties='{"note":"tab\\there\\nnew \\"q\\" \\\\ done","n":{"x":[1,2]},"e":"日本"}',
         event_time_ms=0, window_start_ms=0, ingestion_time_ms=1),
    # before the epoch
    dict(event_id="j-5", customer_id="c3", meter="active_seats", quantity="7", properties=None,
         event_time_ms=-1, window_start_ms=-3600000, ingestion_time_ms=1793577600000),
]


def test_events_read_from_their_json_in_postgres_are_the_rows_the_python_parser_gives(settings) -> None:
    import json

    from jobs.flink.metering import LEDGER_COLUMNS
    from schemas.records import EventJson, parse_ledger, parse_ledger_event

    meta = dict(kind="event", src_topic="usage-events", src_partition=2, src_offset=99)
    docs = [json.dumps({c: {**meta, **m}.get(c) for c, _ in LEDGER_COLUMNS}, separators=(",", ":"),
                       ensure_ascii=False).encode() for m in EVENT_MESSAGES]
    assert all(isinstance(parse_ledger(d), EventJson) for d in docs)
    cols = ("event_id, customer_id, meter, event_time, ingestion_time, quantity, properties, window_start, "
            "source, kafka_topic, kafka_partition, kafka_offset")

    def rows(batch: Batch) -> list[tuple]:
        # rolled back at the end: the other path inserts the same ids
        with connect(settings) as conn, conn.transaction(force_rollback=True):
            r = apply_batch(conn, batch, consumer="t-json", books=PriceBooks(), aggregations=AGG)
            assert r.events_inserted == len(EVENT_MESSAGES)
            ids = [m["event_id"] for m in EVENT_MESSAGES]
            return conn.execute(f"SELECT {cols} FROM usage_events WHERE event_id = ANY(%s) ORDER BY event_id",
                                (ids,)).fetchall()

    in_postgres = rows(Batch(event_json=docs))
    in_python = rows(Batch(events=[parse_ledger_event(d) for d in docs]))
    assert in_postgres == in_python
    assert len(in_postgres) == len(EVENT_MESSAGES)


# --- durable dedup: an event id is counted once, whatever Flink's state knew -------------------


def window_rows(conn: psycopg.Connection, c: str, m: str) -> list[tuple]:
    return conn.execute(
        """SELECT window_start, revision, quantity, event_count, source FROM aggregated_usage
            WHERE customer_id = %s AND meter = %s ORDER BY window_start, revision""", (c, m)).fetchall()


def ledger_dups(conn: psycopg.Connection, event_id: str) -> int:
    return conn.execute("""SELECT coalesce(sum(duplicates), 0) FROM duplicate_counts
                            WHERE event_id = %s AND source = 'ledger'""", (event_id,)).fetchone()[0]


@pytest.mark.parametrize(("meter", "aggregation", "final"), [
    ("api_calls", "sum", Decimal(106)),        # 100 + 5 + 1, the re-sent 100 not again
    ("active_seats", "max", Decimal(100)),     # the peak stays 100
    ("requests", "count", Decimal(3)),         # three distinct events
])
def test_an_event_resent_in_a_later_run_is_not_counted_again_for_any_aggregation(
        settings, meter: str, aggregation: str, final: Decimal) -> None:
    """Issue 13's reproduction at the ledger: run 1 accepts e1 (100) and e2 (5); run 2, a fresh
    Flink job without its dedup state, accepts the producer's retry of e1 and a new e3 (1) and
    counts both in its firing. Postgres counts e1 once."""
    c = f"resend-{meter}"
    agg = {meter: aggregation}
    book = price_book_from_data(BOOK)
    ws = NOV + 10 * H
    e1 = ev(c, meter, ws, "100", event_id=f"{c}-e1")
    e2 = ev(c, meter, ws, "5", minute=30)
    e3 = ev(c, meter, ws, "1", minute=40)
    off = Offsets()
    with connect(settings) as conn:
        conn.execute("INSERT INTO customers (customer_id, price_book_id, currency) VALUES (%s, 'std-usd', 'USD')", (c,))
        conn.commit()
        books = PriceBooks()
        apply_batch(conn, off.batch([e1, e2, firing(c, meter, ws, [e1, e2])]), consumer=c, books=books,
                    aggregations=agg)
        retry = dataclasses.replace(e1, kafka_offset=e1.kafka_offset + 1000)  # another record, same id
        r = apply_batch(conn, off.batch([retry, e3, firing(c, meter, ws, [retry, e3])]), consumer=c,
                        books=books, aggregations=agg)
        assert r.events_inserted == 1
        (*_, last), = [window_rows(conn, c, meter)[-1:]]
        assert last[2:4] == (final, 3)
        assert conn.execute("SELECT count(*), sum(quantity) FROM usage_events WHERE customer_id = %s",
                            (c,)).fetchone() == (3, Decimal(106))
        assert ledger_dups(conn, e1.event_id) == 1
        if meter != "requests":  # requests is not priced: a rating error, no charge
            windows, total = sums(conn, c, meter)
            assert windows == {ws: final}
            assert total == rate_period(book, meter, windows)


def test_a_resent_copy_with_other_content_loses_to_the_first_and_is_recorded_as_a_conflict(settings) -> None:
    c = "conflict"
    ws = NOV + 3 * H
    first = ev(c, "api_calls", ws, "7", event_id="conflict-1")
    other = ev(c, "api_calls", ws + H, "70", event_id="conflict-1")  # another quantity and window
    off = Offsets()
    with connect(settings) as conn:
        books = PriceBooks()
        apply_batch(conn, off.batch([first, firing(c, "api_calls", ws, [first])]), consumer=c,
                    books=books, aggregations=AGG)
        apply_batch(conn, off.batch([other, firing(c, "api_calls", ws + H, [other])]), consumer=c,
                    books=books, aggregations=AGG)
        # the later window counted only the duplicate: no revision, no charge for it
        assert [r[:4] for r in window_rows(conn, c, "api_calls")] == [(ws, 1, Decimal(7), 1)]
        assert ledger_dups(conn, "conflict-1") == 1
        assert conn.execute("""SELECT window_start_at, quantity FROM (
                                 SELECT event_time AS window_start_at, quantity FROM event_id_conflicts
                                  WHERE event_id = 'conflict-1') x""").fetchall() == [(ws + H, Decimal(70))]


def test_a_late_event_resent_after_it_was_counted_makes_no_revision(settings) -> None:
    c = "late-resend"
    ws = NOV + 4 * H
    off = Offsets()
    with connect(settings) as conn:
        books = PriceBooks()
        apply_batch(conn, off.batch([*fire(c, "api_calls", ws, "2"), late(c, "api_calls", ws, "3", "lr-1")]),
                    consumer=c, books=books, aggregations=AGG)
        before = window_rows(conn, c, "api_calls")
        r = apply_batch(conn, off.batch([late(c, "api_calls", ws, "3", "lr-1")]), consumer=c, books=books,
                        aggregations=AGG)
        assert (r.events_inserted, r.revisions, r.charges) == (0, 0, 0)
        assert window_rows(conn, c, "api_calls") == before
        assert [r[2] for r in before] == [Decimal(2), Decimal(5)]


def test_a_firing_read_before_its_events_is_rated_once_they_are_read(settings) -> None:
    """The job's outputs reach the ledger topic through several transactional producers: a
    firing can be read before the events it counted. It waits for them, then gives ONE revision
    with the window's full quantity (not a short first revision and a correction)."""
    c = "reorder"
    ws = NOV + 6 * H
    events = [ev(c, "api_calls", ws, q) for q in ("4", "6")]
    off = Offsets()
    with connect(settings) as conn:
        conn.execute("INSERT INTO customers (customer_id, price_book_id, currency) VALUES (%s, 'std-usd', 'USD')", (c,))
        conn.commit()
        books = PriceBooks()
        r0 = apply_batch(conn, off.batch([firing(c, "api_calls", ws, events), events[0]]), consumer=c,
                         books=books, aggregations=AGG)
        assert r0.revisions == 0
        r1 = apply_batch(conn, off.batch([events[1]]), consumer=c, books=books, aggregations=AGG)
        assert r1.revisions == 1
        assert [r[1:] for r in window_rows(conn, c, "api_calls")] == [(1, Decimal(10), 2, "window")]
        cause, = conn.execute("SELECT cause FROM rated_charges WHERE customer_id = %s", (c,)).fetchone()
        assert cause == "window_fired"


def test_a_window_whose_only_events_are_late_is_rated_at_its_first_late_event(settings) -> None:
    """Flink fires a window whose first element arrives within allowed lateness at once: no
    on-time firing will come, so the late event alone makes the window's first revision."""
    c = "late-only"
    ws = NOV + 8 * H
    off = Offsets()
    with connect(settings) as conn:
        r = apply_batch(conn, off.batch([late(c, "api_calls", ws, "9", "lo-1")]), consumer=c,
                        books=PriceBooks(), aggregations=AGG)
        assert r.revisions == 1
        assert [x[1:] for x in window_rows(conn, c, "api_calls")] == [(1, Decimal(9), 1, "late_revision")]


def test_the_streaming_writers_sessions_run_without_jit_and_others_keep_the_servers_setting(settings) -> None:
    """JIT compiles the writers' per-batch statements at every batch (docs/PERFORMANCE.md,
    session 7): their sessions turn it off; an ordinary session keeps the server's setting."""
    import inspect

    import jobs.consumers.dead_letters
    import jobs.consumers.rerating
    import jobs.flink.run

    with connect(settings, jit=False) as conn:
        assert conn.execute("SHOW jit").fetchone()[0] == "off"
    with connect(settings) as conn:
        assert b"jit" not in conn.pgconn.options
    for module, name in ((jobs.flink.run, "meterflow-ledger"), (jobs.consumers.rerating, "meterflow-rerating"),
                         (jobs.consumers.dead_letters, "meterflow-dead-letters")):
        source = inspect.getsource(module)
        assert f'application_name="{name}", jit=False' in source, module.__name__
