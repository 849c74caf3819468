"""Invariant 2, order independence, end to end: Kafka → metering job (Flink) → ledger → late topic
→ re-rating job → Postgres.

One fixed event set (three meters, two customers, a month boundary, identical duplicates, events
days late) is produced in 10 random arrival orders. Running Flink once per order would take
~40 s each, so every order gets its own customer-id and event-id prefix (``o3-``) and all orders
go, interleaved record by record, into ONE single-partition topic: at any point of the topic each
order has delivered the same number of its records, so the watermark (the max event time seen,
minus the out-of-orderness) tracks each order's own progress and classifies its records as on
time, late within allowed lateness (10 min) or beyond it (→ side output → re-rating) much as it
would if that order ran alone. The metering job runs once (bounded), the re-rating job once.

Then, per order (prefix mapped away): identical final per-window quantities, identical Σ charges
per (customer, meter, period), each equal to pricing's Rate over the final windows — and equal to
the windows computed directly from the event set.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest

from jobs.consumers.rerating import run_rerating
from jobs.flink.run import run_metering
from jobs.tools.produce import send
from jobs.tools.synthetic import SyntheticRecord
from pricing.book import load_price_book
from pricing.periods import isoformat_utc, period_start
from pricing.rater import rate_period
from schemas.config import TimeSettings
from sinks.db import connect
from tests.e2e.test_rerating_support import charged, final_windows, utc
from tests.integration.metering_util import (
    PRICE_BOOK,
    load_prices,
    private_metering_settings,
    read_topic,
)

pytestmark = pytest.mark.integration

ORDERS = 10
SEEDS = [20260 + k for k in range(ORDERS)]
CUSTOMERS = ["c1", "c2"]
METERS = {"api_calls": "sum", "storage_gb_hours": "sum", "seats": "max"}
START = utc(2026, 10, 31, 14)  # the stream spans the October/November boundary
SPAN = timedelta(hours=20)


def event_set() -> list[dict]:
    """The fixed set: 150 distinct events (12 of them days late) + 15 exact duplicates."""
    rnd = random.Random(7)
    events = []
    for i in range(150):
        meter = list(METERS)[i % 3]
        t = START + timedelta(seconds=rnd.randrange(int(SPAN.total_seconds())))
        if i % 12 == 5:
            t -= timedelta(days=rnd.choice([2, 3]))  # days late (still in October)
        q = {"api_calls": str(rnd.randint(1, 400)), "storage_gb_hours": f"{rnd.randint(1, 900)}.25",
             "seats": str(rnd.randint(1, 30))}[meter]
        events.append({"event_id": f"e{i:04d}", "customer_id": CUSTOMERS[i % 2], "meter": meter,
                       "event_time": isoformat_utc(t), "quantity": q, "days_late": i % 12 == 5})
    return events


def arrival_order(events: list[dict], seed: int) -> list[dict]:
    """Mostly by event time with up to 30 min of disorder; days-late events at a random point
    after their time; 15 duplicates (identical payloads) anywhere after their original."""
    rnd = random.Random(seed)
    on_time = [e for e in events if not e["days_late"]]
    order = sorted(on_time, key=lambda e: _ts(e) + rnd.uniform(0, 1800))
    for e in (e for e in events if e["days_late"]):
        order.insert(rnd.randrange(len(order) // 4, len(order) + 1), e)
    for e in rnd.sample(events, 15):
        pos = order.index(e)
        order.insert(rnd.randrange(pos + 1, len(order) + 1), e)
    return order


def _ts(e: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(e["event_time"]).timestamp()


def _record(e: dict, k: int) -> SyntheticRecord:
    doc = {f: e[f] for f in ("event_id", "customer_id", "meter", "event_time", "quantity")}
    doc["event_id"] = f"o{k}-{doc['event_id']}"
    doc["customer_id"] = f"o{k}-{doc['customer_id']}"
    value = json.dumps(doc).encode()
    return SyntheticRecord(doc["customer_id"].encode(), value, int(_ts(e) * 1000), "valid")


def expected_windows(events: list[dict]) -> dict[tuple, dict]:
    from datetime import datetime

    out: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for e in events:
        t = datetime.fromisoformat(e["event_time"])
        ws = t.replace(minute=0, second=0, microsecond=0)
        out[(e["customer_id"], e["meter"], period_start(ws))][ws].append(Decimal(e["quantity"]))
    return {k: {ws: (max(qs) if METERS[k[1]] == "max" else sum(qs)) for ws, qs in v.items()}
            for k, v in out.items()}


@pytest.fixture(scope="module")
def run_all_orders():
    extra = {"watermark_emit": "on-event"} if "watermark_emit" in TimeSettings.model_fields else {}
    with private_metering_settings(partitions=1, window_size="1h", allowed_lateness="10m",
                                   max_out_of_orderness="1m", idleness_timeout="10m", **extra) as settings:
        load_prices(settings, [f"o{k}-{c}" for k in range(ORDERS) for c in CUSTOMERS])
        events = event_set()
        orders = [arrival_order(events, s) for s in SEEDS]
        assert all(len(o) == len(orders[0]) for o in orders)
        interleaved = [_record(orders[k][j], k) for j in range(len(orders[0])) for k in range(ORDERS)]
        send(settings, interleaved, progress=False)
        run_metering(settings, bounded=True)
        late = read_topic(settings, settings.topics.late)
        rr = run_rerating(settings, bounded=True, linger_s=1.0)
        yield settings, events, late, rr


def _per_order(d: dict, k: int) -> dict:
    p = f"o{k}-"
    return {(c[len(p):], m, ps): v for (c, m, ps), v in d.items() if c.startswith(p)}


def test_every_arrival_order_gives_the_same_windows_and_charges_and_sigma_equals_rate(run_all_orders) -> None:
    settings, events, late, rr = run_all_orders
    book = load_price_book(PRICE_BOOK)
    fw, ch = final_windows(settings), charged(settings)
    expected = expected_windows(events)
    assert {p for _, _, p in expected} == {utc(2026, 10, 1), utc(2026, 11, 1)}
    failures = []
    for k, seed in enumerate(SEEDS):
        w_k, c_k = _per_order(fw, k), _per_order(ch, k)
        if w_k != expected:
            bad = sorted(key for key in set(w_k) | set(expected) if w_k.get(key) != expected.get(key))
            failures.append(f"order {k} (seed {seed}): final windows differ from the event set in {bad[:3]}")
        ref = _per_order(ch, 0)
        if c_k != ref:
            failures.append(f"order {k} (seed {seed}): Σ charges differ from order 0 (seed {SEEDS[0]})")
        for (c, m, p), windows in w_k.items():
            rate = rate_period(book, m, windows, aggregation=METERS[m], customer_id=f"o{k}-{c}")
            if c_k.get((c, m, p), Decimal(0)) != rate:
                failures.append(f"order {k} (seed {seed}): Σ charges {c_k.get((c, m, p))} != Rate {rate} "
                                f"for {c}/{m}/{p.date()}")
    assert not failures, "\n".join(failures) + f"\nseeds: {SEEDS}"


def test_the_orders_took_every_path_on_time_late_revision_and_re_rating(run_all_orders) -> None:
    """The test is only meaningful if the orders really took different paths."""
    settings, events, late, rr = run_all_orders
    late_per_order = Counter(r["event_id"].split("-")[0] for r in late)
    assert len(late_per_order) == ORDERS, late_per_order  # every order sent events to the side output
    assert rr.folded_in == len(late)
    with connect(settings) as conn:
        sources = dict(conn.execute("SELECT source, count(*) FROM aggregated_usage GROUP BY 1").fetchall())
        causes = dict(conn.execute("SELECT cause, count(*) FROM rated_charges GROUP BY 1").fetchall())
        n_events = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
        dups = conn.execute("SELECT coalesce(sum(duplicates), 0) FROM duplicate_counts").fetchone()[0]
    assert sources.get("window") and sources.get("late"), sources
    assert causes.get("late_event"), causes
    # conservation per the whole input: every distinct event exactly once, duplicates counted
    assert n_events == ORDERS * len(events)
    assert dups == ORDERS * 15
    print(f"paths: revisions by source {sources}, charges by cause {causes}, "
          f"late per order {dict(late_per_order)}")
