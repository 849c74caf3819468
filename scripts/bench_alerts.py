"""Alert latency on the local stack (not a timed test; docs/ALERTS.md has the results).

Runs the whole path with PRIVATE topics and a fresh database: `meterflow run metering` (streaming
Flink job + ledger writer) and `meterflow alerts publish --follow`, produces background load at
--rate events/s (on time, `api_calls`, the compact layout of the JVM fast path) for --seconds,
plus --markers-per-s marked events: each goes to its own marker customer whose usage rule
(info at 1 call) it crosses. Reports p50 / p95 / p99 of

* send → alert row (`billing.alerts.created_at`, clock_timestamp() in Postgres; same host clock),
* send → alert record read from the alerts topic (a read_committed consumer's receive time),

and where the time goes for the marked events: send → accepted by the job (`usage_events.
ingestion_time`, the job's processing time), → its row in Postgres (the Kafka transaction commits
at the checkpoint; then the ledger writer's poll and batch), → the alert on the topic (publisher).

    .venv/bin/python scripts/bench_alerts.py                               # 2,000/s, 60 s, 10 s checkpoints
    .venv/bin/python scripts/bench_alerts.py --checkpoint-interval 1s
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from billing.alerts import rules_from_data  # noqa: E402
from jobs.tools.topics import ensure_topics  # noqa: E402
from schemas.config import load_settings  # noqa: E402
from sinks.alerts import store_rules  # noqa: E402
from sinks.db import connect  # noqa: E402
from tests.integration.dbutil import fresh_database  # noqa: E402
from tests.integration.metering_util import load_prices, with_private_names  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": round(pct(xs, 50) * 1000), "p95_ms": round(pct(xs, 95) * 1000),
            "p99_ms": round(pct(xs, 99) * 1000), "max_ms": round(max(xs) * 1000) if xs else None,
            "mean_ms": round(statistics.fmean(xs) * 1000) if xs else None}


def payload(event_id: str, customer: str, q: int) -> bytes:
    now = datetime.now(UTC)
    t = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return (f'{{"event_id":"{event_id}","event_time":"{t}","customer_id":"{customer}",'
            f'"meter":"api_calls","quantity":{q}}}').encode()


def env_for(s, tmp: Path, checkpoint: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FLINK_LOG_DIR": str(tmp / "flink-log"),
        "METERFLOW__KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "METERFLOW__KAFKA__CONSUMER_GROUP": s.kafka.consumer_group,
        "METERFLOW__POSTGRES__DATABASE": s.postgres.database,
        "METERFLOW__POSTGRES__PORT": str(s.postgres.port),
        "METERFLOW__FLINK__CHECKPOINT_DIR": str(tmp / "checkpoints"),
        "METERFLOW__FLINK__CHECKPOINT_INTERVAL": checkpoint,
        "METERFLOW__LEDGER__STATUS_FILE": str(tmp / "ledger-status.json"),
        "PYTHONPATH": str(ROOT),
    })
    for k in ("events", "dlq", "late", "ledger", "duplicates", "alerts"):
        env[f"METERFLOW__TOPICS__{k.upper()}"] = getattr(s.topics, k)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000, help="background events/s")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--markers-per-s", type=float, default=2)
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--checkpoint-interval", default="10s")
    a = ap.parse_args()

    from kafka import KafkaConsumer, KafkaProducer

    tag = f"bench-al-{secrets.token_hex(3)}"
    base = with_private_names(load_settings(), tag, a.partitions)
    base = base.model_copy(update={"topics": base.topics.model_copy(update={"alerts": f"{tag}-alerts"})})
    n_markers = int(a.seconds * a.markers_per_s)
    background = [f"cust-{i:05d}" for i in range(a.customers)]
    markers = [f"mark-{i:05d}" for i in range(n_markers)]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmpd, fresh_database(base) as s:
        tmp = Path(tmpd)
        ensure_topics(s)
        load_prices(s, [*background, *markers, "warmup"])
        with connect(s) as conn:  # every customer is evaluated: a default spend rule nobody reaches
            store_rules(conn, rules_from_data({"rules": [
                {"rule_id": "spend", "kind": "spend", "levels": {"warning": "1000000000"}},
                *({"rule_id": "mark", "kind": "usage", "meter": "api_calls", "customer_id": m,
                   "levels": {"info": "1"}} for m in markers)]}))
        env = env_for(s, tmp, a.checkpoint_interval)
        for name, args in (("metering", ["run", "metering"]), ("publisher", ["alerts", "publish", "--follow"])):
            procs.append(subprocess.Popen([sys.executable, "-m", "cli.app", *args], cwd=ROOT, env=env,
                                          stdout=(tmp / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
                                          start_new_session=True))
        received: dict[str, float] = {}
        stop = threading.Event()

        def consume() -> None:
            kc = KafkaConsumer(s.topics.alerts, bootstrap_servers=s.kafka.bootstrap_servers,
                               auto_offset_reset="earliest", isolation_level="read_committed",
                               consumer_timeout_ms=200, fetch_max_wait_ms=50)
            while not stop.is_set():
                for m in kc:
                    r = json.loads(m.value)
                    received.setdefault(r["customer_id"], time.time())  # dedup: first copy
            kc.close()

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, acks="all", linger_ms=5)
        try:
            # warm-up: wait until the pipeline carries an event all the way into Postgres
            t_up = time.time()
            with connect(s, autocommit=True) as conn:
                while not conn.execute("SELECT 1 FROM billing.usage_events LIMIT 1").fetchone():
                    for p in procs:
                        if p.poll() is not None:
                            raise SystemExit(f"a process exited: see {tmp}: "
                                             + (tmp / "metering.log").read_text()[-2000:])
                    prod.send(s.topics.events, key=b"warmup",
                              value=payload(f"w-{secrets.token_hex(6)}", "warmup", 1))
                    prod.flush()
                    time.sleep(1)
                    if time.time() - t_up > 300:
                        raise SystemExit("the pipeline did not start within 300 s")
            print(f"pipeline up after {time.time() - t_up:.0f} s; load {a.rate}/s for {a.seconds:.0f} s, "
                  f"{n_markers} markers, checkpoints every {a.checkpoint_interval}", flush=True)
            sent: dict[str, float] = {}
            t0 = time.monotonic()
            n_bg = 0
            next_marker = 0
            tick = 0.01
            while (el := time.monotonic() - t0) < a.seconds:
                due = int(el * a.rate)
                while n_bg < due:
                    c = background[n_bg % len(background)]
                    prod.send(s.topics.events, key=c.encode(), value=payload(f"bg-{n_bg}", c, 1))
                    n_bg += 1
                if next_marker < n_markers and el >= next_marker / a.markers_per_s:
                    m = markers[next_marker]
                    sent[m] = time.time()
                    prod.send(s.topics.events, key=m.encode(), value=payload(f"mk-{next_marker}", m, 1))
                    next_marker += 1
                time.sleep(tick)
            rate = n_bg / (time.monotonic() - t0)
            prod.flush()
            print(f"sent {n_bg} background events ({rate:.0f}/s) and {len(sent)} markers", flush=True)
            deadline = time.time() + 120
            with connect(s, autocommit=True) as conn:
                while time.time() < deadline:
                    n = conn.execute("SELECT count(*) FROM billing.alerts WHERE rule_id = 'mark'").fetchone()[0]
                    if n >= len(sent) and len([m for m in sent if m in received]) >= len(sent):
                        break
                    time.sleep(0.5)
                rows = conn.execute(
                    """SELECT a.customer_id, extract(epoch FROM a.created_at),
                              extract(epoch FROM u.ingestion_time)
                         FROM billing.alerts a JOIN billing.usage_events u ON u.customer_id = a.customer_id
                        WHERE a.rule_id = 'mark'""").fetchall()
            to_row = [float(t_row) - sent[c] for c, t_row, _ in rows if c in sent]
            to_job = [float(t_ing) - sent[c] for c, _, t_ing in rows if c in sent]
            job_to_row = [float(t_row) - float(t_ing) for c, t_row, t_ing in rows if c in sent]
            row_at = {c: float(t_row) for c, t_row, _ in rows}
            to_topic = [received[c] - sent[c] for c in sent if c in received]
            row_to_topic = [received[c] - row_at[c] for c in sent if c in received and c in row_at]
            print(json.dumps({"checkpoint_interval": a.checkpoint_interval, "rate": round(rate),
                              "markers": len(sent), "send_to_alert_row": summary(to_row),
                              "send_to_alert_on_topic": summary(to_topic),
                              "send_to_job": summary(to_job), "job_to_alert_row": summary(job_to_row),
                              "alert_row_to_topic": summary(row_to_topic)}, indent=1), flush=True)
        finally:
            stop.set()
            prod.close()
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
