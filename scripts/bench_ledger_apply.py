"""Benchmark of the ledger store alone: CPU per event of applying the metering job's ledger
messages to Postgres (not a timed test; docs/PERFORMANCE.md has the results).

No Kafka, no Flink: ledger-topic messages in the metering job's format
(tests/integration/ledger_input.py: per customer, meter and hour its on-time events, a few
duplicate copies, the firing, now and then a late event) go, batch by batch, through the ledger
writer's stage (``LedgerStage.write``: parse, ``apply_batch`` with offsets, one transaction per
batch) into a fresh migrated database. Reported per event: this process's CPU (the writer's
Python, psycopg) and the CPU of its Postgres backend (``/proc``, the stack runs on this host),
and where the Python time goes with ``--profile`` (cProfile, top functions).

    .venv/bin/python scripts/bench_ledger_apply.py                      # 1,000 customers x 8 h, no duplicates
    .venv/bin/python scripts/bench_ledger_apply.py --customers 2000 --dup-rate 0 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.consumers.ledger_writer import LedgerStage, metering_roles  # noqa: E402
from schemas.config import load_settings  # noqa: E402
from sinks.db import connect  # noqa: E402
from tests.integration.dbutil import fresh_database  # noqa: E402
from tests.integration.ledger_input import ledger_input  # noqa: E402
from tests.integration.metering_util import load_prices  # noqa: E402


@dataclass
class _Record:  # what the stage reads of a kafka-python ConsumerRecord
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class _Polled:
    records: list


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--per-window", type=int, default=16, help="on-time events per (customer, meter, hour)")
    ap.add_argument("--batch", type=int, default=20_000, help="records per batch (the writer's max_batch)")
    ap.add_argument("--duplicates", action="store_true",
                    help="keep the input's duplicate copies (~5 %%; in a real run Flink's state drops them)")
    ap.add_argument("--profile", action="store_true", help="cProfile the writer's Python")
    args = ap.parse_args(argv)

    customers = [f"c{i:05d}" for i in range(args.customers)]
    start = datetime(2026, 11, 10, tzinfo=UTC)
    msgs = ledger_input(customers, start, args.windows, args.per_window)
    if not args.duplicates:
        seen: set[bytes] = set()
        kept = []
        for k, v in msgs:
            eid = v.split(b'"event_id":', 1)[1].split(b",", 1)[0] if v.startswith(b'{"kind":"event"') else None
            if eid is None or eid not in seen:
                kept.append((k, v))
                seen.add(eid)
        msgs = kept
    records = [_Record("ledger", 0, i, k, v) for i, (k, v) in enumerate(msgs)]
    events = sum(1 for _, v in msgs if v.startswith(b'{"kind":"event"'))
    with fresh_database(load_settings()) as settings:
        load_prices(settings, customers)
        stage = LedgerStage(metering_roles("ledger", "dups"), "bench", {"api_calls": "sum", "seats": "max"})
        with connect(settings) as conn:
            pid = conn.info.backend_pid
            prof = cProfile.Profile() if args.profile else None
            pg0, py0, t0 = _proc_cpu_s(pid), time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            for i in range(0, len(records), args.batch):
                stage.write(conn, _Polled(records[i:i + args.batch]))
            if prof:
                prof.disable()
            pg1, py1, t1 = _proc_cpu_s(pid), time.process_time(), time.perf_counter()
            n_rev = conn.execute("SELECT count(*) FROM aggregated_usage").fetchone()[0]
            n_ev = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
    print(f"{len(records):,} records ({events:,} event messages, {n_ev:,} accepted, {n_rev:,} revisions)"
          f" in {t1 - t0:.1f} s wall")
    print(f"CPU µs per event message: python {(py1 - py0) / events * 1e6:.1f}, "
          f"postgres {(pg1 - pg0) / events * 1e6:.1f}, total {(py1 - py0 + pg1 - pg0) / events * 1e6:.1f}")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
