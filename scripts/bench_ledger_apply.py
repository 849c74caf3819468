"""Benchmark of the ledger store alone: CPU per event of applying the metering job's ledger
messages to Postgres (not a timed test; docs/PERFORMANCE.md has the results).

No Kafka, no Flink: ledger-topic messages in the metering job's format
(tests/integration/ledger_input.py: per customer, meter and hour its on-time events, the firing,
now and then a late event; no duplicate copies unless ``--duplicates``, as in a normal run where
Flink's state drops them) are parsed and applied batch by batch (``apply_batch`` with offsets,
one transaction per batch) into a fresh migrated database. By default a window's firing comes
after the next hour's events have started, as the metering job emits them (``--order grouped``:
right after its own events). Reported per event message: this process's CPU (parsing, the
writer's Python, psycopg) and the CPU of its own Postgres backend (``/proc``: the stack runs on
this host; other sessions' backends are not counted), so two trees compare on a busy machine.

``--root`` applies with another source tree (e.g. a git worktree of an older commit, sharing this
venv): the input is generated here, the parsing and ``apply_batch`` are that tree's.

    .venv/bin/python scripts/bench_ledger_apply.py                        # 1,000 customers x 8 h
    .venv/bin/python scripts/bench_ledger_apply.py --root /tmp/wt-78c1aef --profile
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import os
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 11, 10, tzinfo=UTC)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def messages(customers: int, windows: int, per_window: int, duplicates: bool, order: str) -> list[bytes]:
    sys.path.insert(0, str(ROOT))
    from tests.integration.ledger_input import ledger_input

    msgs = [v for _, v in ledger_input([f"c{i:05d}" for i in range(customers)], START, windows, per_window)]
    sys.path.remove(str(ROOT))
    if not duplicates:
        seen: set[str] = set()
        kept = []
        for v in msgs:
            d = json.loads(v)
            if d["kind"] != "event" or d["event_id"] not in seen:
                kept.append(v)
                seen.add(d.get("event_id"))
        msgs = kept
    if order == "e2e":  # on-time events of hour w, then (after hour w+1's events began) its firings
        def key(iv: tuple[int, bytes]) -> tuple[int, int]:
            d = json.loads(iv[1])
            w = (d["window_start_ms"] - int(START.timestamp() * 1000)) // 3_600_000
            on_time_event = d["kind"] == "event" and d.get("lateness") == "on_time"
            return (w * 2 if on_time_event else w * 2 + 3, iv[0])
        msgs = [v for _, v in sorted(enumerate(msgs), key=key)]
    elif order == "interleaved":  # like "e2e", and within an hour every key's i-th event in turn, as a
        # job reading many customers' traffic emits them: a batch touches ~every window of the hour
        def key2(iv: tuple[int, bytes]) -> tuple[int, int, int]:
            d = json.loads(iv[1])
            w = (d["window_start_ms"] - int(START.timestamp() * 1000)) // 3_600_000
            if d["kind"] == "event" and d.get("lateness") == "on_time":
                return (w * 2, int(d["event_id"].rsplit("-", 1)[1]), iv[0])
            return (w * 2 + 3, 0, iv[0])
        msgs = [v for _, v in sorted(enumerate(msgs), key=key2)]
    return msgs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--per-window", type=int, default=16, help="on-time events per (customer, meter, hour)")
    ap.add_argument("--batch", type=int, default=10_000, help="records per batch")
    ap.add_argument("--order", choices=("e2e", "grouped", "interleaved"), default="e2e")
    ap.add_argument("--duplicates", action="store_true", help="keep the input's duplicate copies (~5 %%)")
    ap.add_argument("--root", default=str(ROOT), help="the source tree that parses and applies")
    ap.add_argument("--profile", action="store_true", help="cProfile the writer's Python")
    ap.add_argument("--profile-sort", default="tottime", choices=("tottime", "cumulative"),
                    help="order of --profile's table (cumulative: which stage's calls cost what)")
    args = ap.parse_args(argv)

    msgs = messages(args.customers, args.windows, args.per_window, args.duplicates, args.order)
    for name in [m for m in sys.modules if m.split(".")[0] in ("tests", "jobs", "schemas", "sinks", "pricing")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(args.root).resolve()))
    ledger = importlib.import_module("sinks.ledger")
    try:  # the layout since issue 15; before it, all of this was in sinks/ledger.py
        records = importlib.import_module("schemas.records")
        books = importlib.import_module("sinks.pricebook_store").PriceBooks()
    except ImportError:
        records, books = ledger, ledger.PriceBooks()
    from schemas.config import load_settings
    from sinks.db import connect
    from tests.integration.dbutil import fresh_database
    from tests.integration.metering_util import load_prices

    events = 0
    with fresh_database(load_settings()) as settings:
        load_prices(settings, [f"c{i:05d}" for i in range(args.customers)])
        with connect(settings) as conn:
            conn.commit()
            pid = conn.info.backend_pid
            prof = cProfile.Profile() if args.profile else None
            pg0, py0, t0 = _proc_cpu_s(pid), time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            for i in range(0, len(msgs), args.batch):
                batch = ledger.Batch(start_offsets={("ledger", 0): i},
                                     offsets={("ledger", 0): min(i + args.batch, len(msgs))})
                for v in msgs[i:i + args.batch]:
                    item = records.parse_ledger(v)
                    if isinstance(item, records.EventJson):
                        batch.event_json.append(item.value)
                        events += 1
                    elif item is not None:
                        batch.windows.append(item)
                ledger.apply_batch(conn, batch, consumer="bench", books=books,
                                   aggregations={"api_calls": "sum", "seats": "max"})
            if prof:
                prof.disable()
            pg1, py1, t1 = _proc_cpu_s(pid), time.process_time(), time.perf_counter()
            n_rev, n_ch, charged = conn.execute(
                "SELECT (SELECT count(*) FROM billing.aggregated_usage), count(*), sum(amount) "
                "FROM billing.rated_charges").fetchone()
    print(f"{args.root}: {len(msgs):,} records ({events:,} event messages), {n_rev:,} revisions, "
          f"{n_ch:,} charges, Σ {charged}; {t1 - t0:.1f} s wall")
    print(f"CPU µs per event message: python {(py1 - py0) / events * 1e6:.1f}, "
          f"postgres {(pg1 - pg0) / events * 1e6:.1f}, total {(py1 - py0 + pg1 - pg0) / events * 1e6:.1f}")
    if prof:
        pstats.Stats(prof).sort_stats(args.profile_sort).print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
