"""Benchmark of the rating engine (not a timed test).

Measures PeriodRater updates per second on one core for:
  1. in-order windows: a month of hourly windows (744) for N keys (customer, meter), default 10k
     keys = 7.44M updates;
  2. the same stream where 5 % of the updates are out-of-order revisions of an earlier window.

Each update builds a Charge (with its deterministic id). ``--explain`` also materialises every
charge's explanation dict (``charge.calculation``), as the Postgres sink does.

    .venv/bin/python scripts/bench_rating.py --keys 1000
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pricing import PeriodRater, price_book_from_data

BOOK = price_book_from_data({
    "price_book_id": "bench",
    "currency": "USD",
    "versions": [
        {"name": "v1", "effective_from": "2026-01-01T00:00:00Z", "prices": [
            {"meter": "api_calls", "model": "tiered", "tiers": [
                {"up_to": "1000", "unit_price": "0"},
                {"up_to": "100000", "unit_price": "0.0010"},
                {"up_to": "1000000", "unit_price": "0.0008"},
                {"unit_price": "0.0005"}]}]},
        {"name": "v2", "effective_from": "2026-01-15T00:00:00Z", "prices": [
            {"meter": "api_calls", "model": "tiered", "tiers": [
                {"up_to": "1000", "unit_price": "0"},
                {"up_to": "100000", "unit_price": "0.0009"},
                {"up_to": "1000000", "unit_price": "0.0007"},
                {"unit_price": "0.0004"}]}]},
    ],
})
PERIOD = datetime(2026, 1, 1, tzinfo=UTC)
HOURS = 744


def run(keys: int, ooo_share: float, explain: bool, seed: int = 7) -> tuple[int, float]:
    rnd = random.Random(seed)
    windows = [(PERIOD + timedelta(hours=h), PERIOD + timedelta(hours=h + 1)) for h in range(HOURS)]
    qty = [Decimal(rnd.randint(0, 5000)) + Decimal(rnd.randint(0, 999)) / 1000 for _ in range(997)]
    n = 0
    elapsed = 0.0
    for k in range(keys):
        rater = PeriodRater(BOOK, f"cust-{k}", "api_calls", PERIOD, "sum")
        revs = [0] * HOURS
        # pre-draw the stream so the timer sees only rating
        stream = []
        for h in range(HOURS):
            if h > 0 and ooo_share and rnd.random() < ooo_share:
                j = rnd.randrange(0, h)
                revs[j] += 1
                stream.append((j, qty[(k + h * 7 + j) % 997], "late_revision", revs[j]))
            else:
                stream.append((h, qty[(k + h) % 997], "window_fired", 0))
        t0 = time.perf_counter()
        upd = rater.update
        if explain:
            for h, q, cause, rev in stream:
                ch = upd(windows[h][0], windows[h][1], q, cause=cause, revision=rev)
                if ch is not None:
                    ch.calculation  # noqa: B018 - the lazy explanation is built on access: that is what is timed
        else:
            for h, q, cause, rev in stream:
                upd(windows[h][0], windows[h][1], q, cause=cause, revision=rev)
        elapsed += time.perf_counter() - t0
        n += len(stream)
    return n, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=10_000, help="(customer, meter) keys (default 10000)")
    ap.add_argument("--ooo-share", type=float, default=0.05, help="share of out-of-order revisions")
    ap.add_argument("--explain", action="store_true", help="also build every explanation dict")
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, one core; "
          f"{args.keys} keys × {HOURS} hourly windows")
    for label, share in (("in-order", 0.0), (f"{args.ooo_share:.0%} out-of-order revisions", args.ooo_share)):
        n, s = run(args.keys, share, args.explain)
        print(f"{label:32s} {n:>10,d} updates in {s:7.2f} s = {n / s:>10,.0f} updates/s"
              + (" (with explanations)" if args.explain else ""))


if __name__ == "__main__":
    main()
