"""Property: whatever the runs, the ledger ends as one run would (DESIGN.md invariants 1 and 2).

One random arrival sequence of events (duplicates with the same and with other content, disorder,
late events within lateness) is cut into 1–4 runs of the metering job at random points; each run
is a fresh Flink job (no dedup state), and a run may re-read the tail of the run before it (a
bounded run overlapping the previous one, or a job started fresh instead of restored). A model of
the job emits what Flink would per run — keep-first dedup within the run, a watermark that is the
latest window seen, on-time aggregates fired as the watermark passes, late events within lateness
as late event messages, duplicate counters per run — and the ledger writer reads those messages
with the disorder several transactional producers give and cut into batches anywhere.

Then, for sum, count and max meters: every window equals the aggregate of the first accepted copy
of each event id, Σ charges per period equals Rate(final windows), and every copy beyond the first
is counted as a duplicate exactly once."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pricing.book import price_book_from_data
from pricing.rater import rate_period
from schemas.records import DuplicateCount, LedgerEvent, WindowChange
from sinks.db import connect
from sinks.ledger import apply_batch
from sinks.pricebook_store import PriceBooks
from tests.integration.test_ledger import BOOK, NOV, H, Offsets, seed_prices

pytestmark = [pytest.mark.integration, pytest.mark.module_database]

PRICED = {**BOOK, "versions": [{**BOOK["versions"][0], "prices": [
    *BOOK["versions"][0]["prices"], {"meter": "requests", "model": "flat", "unit_price": "0.5"}]}]}
AGG = {"api_calls": "sum", "active_seats": "max", "requests": "count"}
_customers = itertools.count()


@pytest.fixture(scope="module")
def seed():
    """Seeds the one database the module's tests share."""
    return lambda conn: seed_prices(conn, PRICED, customers=[])


# an event: (id, window index, quantity); a copy of an id may carry other content
copies = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 3), st.integers(0, 40)), min_size=1, max_size=40)


def flink_run(customer: str, meter: str, arrivals: list[tuple[int, int, int]], run: int,
              offset: itertools.count) -> list:
    """The messages one fresh metering job writes for these arrivals (see the module docstring)."""
    out: list = []
    seen: dict[int, int] = {}  # id -> copies in this run
    on_time: dict[int, list[Decimal]] = defaultdict(list)
    watermark = -1

    def fire(w: int) -> None:
        qs = on_time.pop(w, [])
        if qs:
            ws = NOV + w * H
            out.append(WindowChange(1, customer, meter, ws, ws + H, sum(qs, Decimal(0)), len(qs),
                                    max(qs), source="window"))

    for eid, w, q in arrivals:
        seen[eid] = seen.get(eid, 0) + 1
        if seen[eid] > 1:
            continue  # Flink's keep-first dedup
        if w > watermark:
            for old in sorted(on_time):
                if old < w:
                    fire(old)
            watermark = w
        lateness = "late" if w < watermark else "on_time"  # its window's end has passed
        if lateness == "on_time":
            on_time[w].append(Decimal(q))
        ws = NOV + w * H
        n = next(offset)
        out.append(LedgerEvent(f"{customer}-{eid}", customer, meter, ws + timedelta(minutes=q % 60),
                                 Decimal(q), None, ws, ws, "stream", "events", 0, n, lateness, ws + H))
    for w in sorted(on_time):
        fire(w)
    out += [DuplicateCount(f"{customer}-{eid}", n - 1, epoch_ms=run) for eid, n in seen.items() if n > 1]
    return out


def jumbled(msgs: list, rnd: random.Random) -> list:
    """Several transactional producers: each message may overtake a few before it."""
    keyed = [(i + rnd.uniform(0, 4), m) for i, m in enumerate(msgs)]
    return [m for _, m in sorted(keyed, key=lambda x: x[0])]


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=copies, meter=st.sampled_from(sorted(AGG)), cuts=st.lists(st.integers(1, 39), max_size=3),
       overlap=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_any_cut_into_runs_and_batches_ends_as_one_run(settings, arrivals, meter, cuts, overlap, seed) -> None:
    rnd = random.Random(seed)
    customer = f"prop-{next(_customers)}"
    points = sorted({c for c in cuts if c < len(arrivals)})
    runs, start = [], 0
    for p in [*points, len(arrivals)]:
        runs.append(arrivals[max(0, start - overlap) if runs else 0:p])  # may re-read the last few
        start = p
    offset = itertools.count()
    messages = [m for r, part in enumerate(runs) for m in jumbled(flink_run(customer, meter, part, r, offset), rnd)]

    with connect(settings) as conn:
        conn.execute("INSERT INTO customers (customer_id, price_book_id, currency) VALUES (%s, 'std-usd', 'USD')",
                     (customer,))
        conn.commit()
        books, off, i = PriceBooks(), Offsets(), 0
        while i < len(messages):
            k = rnd.randint(1, 12)
            chunk = messages[i:i + k]
            b = off.batch([m for m in chunk if not isinstance(m, DuplicateCount)])
            b.duplicates = [m for m in chunk if isinstance(m, DuplicateCount)]
            apply_batch(conn, b, consumer=customer, books=books, aggregations=AGG)
            i += k

        # the first copy of each id wins; windows aggregate the winners
        first: dict[int, tuple[int, int]] = {}
        for eid, w, q in [a for part in runs for a in part]:
            first.setdefault(eid, (w, q))
        expected: dict = defaultdict(list)
        for w, q in first.values():
            expected[NOV + w * H].append(Decimal(q))
        agg = AGG[meter]
        want = {ws: (Decimal(len(qs)) if agg == "count" else max(qs) if agg == "max" else sum(qs))
                for ws, qs in expected.items()}
        got = dict(conn.execute(
            """SELECT DISTINCT ON (window_start) window_start, quantity FROM aggregated_usage
                WHERE customer_id = %s ORDER BY window_start, revision DESC""", (customer,)).fetchall())
        assert got == want
        total = conn.execute("SELECT coalesce(sum(amount), 0) FROM rated_charges WHERE customer_id = %s",
                             (customer,)).fetchone()[0]
        assert total == rate_period(price_book_from_data(PRICED), meter, want, aggregation=agg)
        dups = conn.execute("""SELECT coalesce(sum(d.duplicates), 0) FROM duplicate_counts d
                                WHERE d.event_id LIKE %s""", (customer + "-%",)).fetchone()[0]
        copies_read = sum(len(part) for part in runs)
        assert dups == copies_read - len(first)
