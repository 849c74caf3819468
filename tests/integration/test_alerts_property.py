"""Property: provisional spend is Rate(period) over the events accepted so far after EVERY batch,
and equals Σ rated charges to the unrounded digit once the windows are final — whatever the
duplicates, the disorder of the ledger messages, the late events within lateness and beyond, and
the cut into batches (the metering job is modelled as in test_ledger_dedup_property)."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from jobs.consumers.rerating import apply_late_batch
from pricing.book import price_book_from_data
from pricing.rater import rate_period
from schemas.records import DuplicateCount, LedgerEvent
from sinks.alerts import check_provisional
from sinks.db import connect
from sinks.ledger import apply_batch
from sinks.pricebook_store import PriceBooks
from tests.integration.dbutil import fresh_database
from tests.integration.test_ledger import NOV, H, Offsets, seed_prices
from tests.integration.test_ledger_dedup_property import AGG, PRICED, copies, flink_run, jumbled

pytestmark = pytest.mark.integration

# a price change inside the period: every meter costs more from 03:00 on
SPLIT = {**PRICED, "price_book_id": "split-usd", "versions": [
    PRICED["versions"][0],
    {"name": "v2", "effective_from": "2026-11-01T03:00:00Z", "prices": [
        {"meter": "api_calls", "model": "tiered",
         "tiers": [{"up_to": "50", "unit_price": "0.13"}, {"unit_price": "0.07"}]},
        {"meter": "active_seats", "model": "flat", "unit_price": "7.5"},
        {"meter": "requests", "model": "flat", "unit_price": "0.333"}]}]}
_customers = itertools.count()


@pytest.fixture(scope="module")
def settings():
    with fresh_database() as s:
        with connect(s) as conn:
            seed_prices(conn, SPLIT, customers=[])
        yield s


def accepted_rate(conn, customer: str, meter: str, book) -> Decimal:
    agg = AGG[meter]
    rows = conn.execute("SELECT window_start, quantity FROM usage_events WHERE customer_id = %s AND meter = %s",
                        (customer, meter)).fetchall()
    per: dict = defaultdict(list)
    for ws, q in rows:
        per[ws].append(q)
    windows = {ws: (Decimal(len(qs)) if agg == "count" else max(qs) if agg == "max" else sum(qs))
               for ws, qs in per.items()}
    return rate_period(book, meter, windows, aggregation=agg)


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=copies, meter=st.sampled_from(sorted(AGG)), beyond=st.lists(
    st.tuples(st.integers(0, 11), st.integers(0, 3), st.integers(0, 40)), max_size=6),
    seed=st.integers(0, 2**32 - 1))
def test_provisional_spend_tracks_the_accepted_events_and_ends_equal_to_the_charges(
        settings, arrivals, meter, beyond, seed) -> None:
    rnd = random.Random(seed)
    book = price_book_from_data(SPLIT)
    customer = f"prov-{next(_customers)}"
    messages = jumbled(flink_run(customer, meter, arrivals, 0, itertools.count()), rnd)
    with connect(settings, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (customer_id, price_book_id, currency) VALUES (%s, 'split-usd', 'USD')",
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
            got = conn.execute("SELECT amount FROM provisional_spend WHERE customer_id = %s AND meter = %s",
                               (customer, meter)).fetchone()
            assert (got[0] if got else Decimal(0)) == accepted_rate(conn, customer, meter, book)
        # events beyond allowed lateness (the re-rating job), some already accepted (duplicates)
        late = [LedgerEvent(f"{customer}-{eid}", customer, meter, NOV + w * H, Decimal(q), None,
                            NOV + w * H, NOV + w * H, "late", "late", 0, n, "late", NOV + (w + 1) * H)
                for n, (eid, w, q) in enumerate(beyond)]
        if late:
            apply_late_batch(conn, late, consumer="late-" + customer, books=books, aggregations=AGG,
                             window_size=H)
        total = conn.execute("SELECT coalesce(sum(amount), 0) FROM rated_charges WHERE customer_id = %s",
                             (customer,)).fetchone()[0]
        amount, n_open = conn.execute(
            "SELECT amount, open_windows FROM provisional_spend WHERE customer_id = %s AND meter = %s",
            (customer, meter)).fetchone()
        assert n_open == 0  # every window fired (flink_run fires all at the end)
        assert amount == total == accepted_rate(conn, customer, meter, book)
        mism, _ = check_provisional(conn, NOV)
        assert [m for m in mism if m[0] == customer] == []
