"""Benchmark of the watermark advisor's replay: N synthetic arrivals (default 10 million) over 8
partitions, a day of traffic with exponential disorder, hours-late stragglers and a partition
that goes quiet for an hour, replayed for the default grid (configured values + measured
percentiles x 5 allowed-lateness values). Prints wall time and CPU microseconds per event.

    .venv/bin/python scripts/bench_advisor.py [--events 10000000] [--partitions 8]
The bar (issue 18): 10 M events in under a minute on the development machine."""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from jobs.batch.watermark_advisor.advise import advise, default_grid
from jobs.batch.watermark_advisor.sim import Arrivals, no_transparent_hugepages
from schemas.config import load_settings


def synthetic(n: int, partitions: int, seed: int = 7) -> Arrivals:
    rng = np.random.default_rng(seed)
    day = 86_400_000
    clock = np.sort(rng.integers(0, day, n)) + 1_790_000_000_000
    part = rng.integers(0, partitions, n)
    # partition 1 is silent for an hour (idleness)
    quiet = (part == 1) & (clock - clock[0] > 6 * 3_600_000) & (clock - clock[0] < 7 * 3_600_000)
    part[quiet] = 0
    lag = rng.exponential(800, n).astype(np.int64)
    slow = rng.random(n) < 0.01  # minutes behind
    lag[slow] += rng.integers(0, 600_000, int(slow.sum()))
    late = rng.random(n) < 0.001
    lag[late] += rng.integers(3_600_000, 2 * day, int(late.sum()))
    counted = rng.random(n) > 0.02  # duplicates and rejected records still move the watermark
    return Arrivals.from_columns(partition=part, offset=np.arange(n), clock_ms=clock, event_ms=clock - lag,
                                 counted=counted, key=rng.integers(0, 5000, n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    no_transparent_hugepages()
    t0 = time.perf_counter()
    arr = synthetic(args.events, args.partitions)
    t_gen = time.perf_counter() - t0
    settings = load_settings()
    w0, c0 = time.perf_counter(), time.process_time()
    grid = default_grid(arr, settings)
    adv = advise(arr, settings, grid)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"events: {args.events:,} in {args.partitions} partitions (generated in {t_gen:.1f} s)")
    print(f"grid: {len(grid.candidates())} settings (bounds {grid.bounds_ms}, lateness {grid.lateness_ms})")
    print(f"advise: wall {wall:.1f} s, CPU {cpu:.1f} s = {cpu / args.events * 1e6:.2f} µs/event "
          f"({cpu / args.events / len(grid.candidates()) * 1e6:.3f} µs/event/setting), peak RSS {rss:.0f} MB")
    print(f"recommendation: {adv.reasoning}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
