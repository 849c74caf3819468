"""Benchmark of the ledger writer scaled out: 1 vs N `meterflow run ledger` processes (not a
timed test; docs/PERFORMANCE.md has the results).

Produces ledger-topic input in the metering job's format (tests/integration/ledger_input.py: per
customer, meter and hour, its on-time events, a few duplicate copies, the firing and now and then
a late event) into PRIVATE topics with --partitions partitions, then for each writer count runs
that many `meterflow run ledger` processes (one consumer group) on a fresh database and times
them from the moment every partition is assigned until Postgres's offsets reach the topics' end.
CPU per event is the writers' own CPU time (user + system, from their status files) over the
same span; Postgres's and Kafka's CPU are not in it.

    .venv/bin/python scripts/bench_writers.py                          # 200 customers, 1 and 2 writers
    .venv/bin/python scripts/bench_writers.py --customers 400 --writers 1,2,4
    .venv/bin/python scripts/bench_writers.py --writers 1 --alert-rules examples/alert-rules.toml
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, for `python scripts/bench_writers.py`

from jobs.tools.topics import ensure_topics
from schemas.config import load_settings
from tests.e2e.test_ledger_writers import read_status, start_writer
from tests.e2e.test_rerating_support import utc
from tests.integration.dbutil import fresh_database
from tests.integration.ledger_input import caught_up, ledger_input, produce_keyed
from tests.integration.metering_util import load_prices, with_private_names

ROOT = Path(__file__).resolve().parents[1]


def run(settings, customers, n: int, tmp: Path, events: int, rules: Path | None = None) -> dict:
    topics = [settings.topics.ledger, settings.topics.duplicates]
    parts = settings.topics.partitions
    with fresh_database(settings) as s:
        load_prices(s, customers)
        if rules is not None:  # alert rules evaluated for every changed customer (docs/ALERTS.md)
            from billing.alerts import load_rules
            from sinks.alerts import store_rules
            from sinks.db import connect

            with connect(s) as conn:
                store_rules(conn, load_rules(rules))
        status = [tmp / f"w{n}-{i}.json" for i in range(n)]
        procs = [start_writer(s, status[i], tmp / f"w{n}-{i}.log", METERFLOW__LEDGER__MAX_BATCH="20000")
                 for i in range(n)]
        try:
            def assigned() -> int:
                return sum(len([p for p in read_status(f).get("partitions", [])
                                if p.startswith(settings.topics.ledger + "[")]) for f in status)
            while assigned() != parts or any(read_status(f).get("state") != "running" for f in status):
                time.sleep(0.02)
            t0 = time.monotonic()
            cpu0 = sum(read_status(f)["cpu_s"] for f in status)
            while not caught_up(s, topics):
                time.sleep(0.05)
            wall = time.monotonic() - t0
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=120)
        cpu = sum(json.loads(f.read_text())["cpu_s"] for f in status) - cpu0
        return {"writers": n, "seconds": round(wall, 2), "events_per_s": round(events / wall),
                "cpu_us_per_event": round(cpu * 1e6 / events, 1), "cpu_s": round(cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--windows", type=int, default=24)
    ap.add_argument("--per-window", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--writers", default="1,2")
    ap.add_argument("--alert-rules", type=Path, default=None, help="load these alert rules first")
    a = ap.parse_args()
    base = with_private_names(load_settings(), f"bench-w-{secrets.token_hex(3)}", a.partitions)
    ensure_topics(base)
    customers = [f"cust-{i:05d}" for i in range(a.customers)]
    msgs = ledger_input(customers, utc(2026, 11, 1), a.windows, a.per_window, seed=11)
    events = sum(1 for _, v in msgs if v.startswith(b'{"kind":"event"'))
    t = time.monotonic()
    produce_keyed(base, base.topics.ledger, msgs)
    print(f"produced {len(msgs)} ledger messages ({events} events) to {a.partitions} partitions "
          f"in {time.monotonic() - t:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in a.writers.split(",")):
            print(json.dumps(run(base, customers, n, Path(tmp), events, a.alert_rules)), flush=True)


if __name__ == "__main__":
    main()
