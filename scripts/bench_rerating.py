"""Late-event throughput of the re-rating job, against a reference in the same invocation.

    .venv/bin/python scripts/bench_rerating.py [--events 200000] [--customers 200] [--batch 20000]

(a) re-rating: N late records produced to a private late topic, then ``run_rerating(bounded)``
    end to end (Kafka read_committed → parse → usage_events insert → per-window partials →
    ledger apply: locks, revisions, re-rating, charges, offsets); events/s folded in.
(b) reference: ``sinks.ledger.apply_batch`` of the same events as the metering ledger would get
    them (the same N raw events + one on-time partial per window, same batch size), into a second
    fresh database, no Kafka; events/s.
Prints both and the ratio a/b. Uses private topics and throw-away databases on the local stack.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--batch", type=int, default=20_000)
    args = ap.parse_args()

    from kafka import KafkaProducer

    from jobs.consumers.rerating import run_rerating
    from pricing.periods import from_epoch_ms, to_epoch_ms
    from schemas.records import LedgerEvent, WindowChange
    from sinks.db import connect
    from sinks.ledger import Batch, apply_batch
    from sinks.pricebook_store import PriceBooks
    from tests.integration.metering_util import load_prices, private_metering_settings

    rnd = random.Random(1)
    customers = [f"bench-{i:04d}" for i in range(args.customers)]
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    W = 3_600_000
    recs = []
    for i in range(args.events):
        c = rnd.choice(customers)
        ms = to_epoch_ms(t0) + rnd.randrange(30 * 24 * 3600) * 1000
        ws = ms - ms % W
        recs.append({"event_id": f"ev-{i:09d}", "customer_id": c, "meter": "api_calls",
                     "event_time_ms": ms, "quantity": str(rnd.randint(1, 100)), "properties": None,
                     "window_start_ms": ws, "window_end_ms": ws + W, "watermark": "x", "payload": "{}",
                     "ingestion_time_ms": ms + 86_400_000, "src_topic": "usage-events",
                     "src_partition": 0, "src_offset": i})

    # (a) the re-rating job, end to end
    with private_metering_settings(partitions=4) as s:
        load_prices(s, customers)
        p = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, acks="all", linger_ms=20,
                          batch_size=512 * 1024)
        for r in recs:
            p.send(s.topics.late, key=r["customer_id"].encode(), value=json.dumps(r).encode())
        p.flush()
        p.close()
        ta = time.perf_counter()
        res = run_rerating(s, bounded=True, max_batch=args.batch, linger_s=0.5)
        a_s = time.perf_counter() - ta
        assert res.folded_in == args.events, res
        a_rate = args.events / a_s
        print(f"(a) re-rating: {args.events} late events in {a_s:.1f} s = {a_rate:,.0f} events/s "
              f"({res.batches} batches, {res.revisions} revisions, {res.charges} charges)")

    # (b) reference: plain apply_batch of the same events as on-time partials
    with private_metering_settings(partitions=1) as s:
        load_prices(s, customers)
        books = PriceBooks()
        tb = time.perf_counter()
        with connect(s) as conn:
            for k in range(0, len(recs), args.batch):
                chunk = recs[k:k + args.batch]
                b = Batch()
                win: dict[tuple, list] = defaultdict(list)
                for r in chunk:
                    b.events.append(LedgerEvent(
                        r["event_id"], r["customer_id"], "api_calls", from_epoch_ms(r["event_time_ms"]),
                        Decimal(r["quantity"]), None, from_epoch_ms(r["window_start_ms"]),
                        from_epoch_ms(r["ingestion_time_ms"]), "stream", "usage-events", 0, r["src_offset"]))
                    win[(r["customer_id"], r["window_start_ms"])].append(Decimal(r["quantity"]))
                for (c, ws), qs in sorted(win.items()):
                    b.windows.append(WindowChange(1, c, "api_calls", from_epoch_ms(ws), from_epoch_ms(ws + W),
                                                  sum(qs), len(qs), max(qs)))
                apply_batch(conn, b, consumer="bench", books=books, aggregations=s.meter_aggregations)
        b_s = time.perf_counter() - tb
        b_rate = args.events / b_s
        print(f"(b) reference apply_batch (on-time partials, no Kafka): {args.events} events in "
              f"{b_s:.1f} s = {b_rate:,.0f} events/s")
    print(f"ratio a/b = {a_rate / b_rate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
