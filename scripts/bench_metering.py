"""Benchmark of the metering job (not a timed test; docs/PERFORMANCE.md has the results).

Produces N synthetic usage events (default 1,000,000) for ~10k keys (5,000 customers x 2 meters)
with realistic disorder (5 % slightly out of order, 1 % duplicates, 0.5 % invalid, 0.1 % days late)
spread over 6 hours of event time (1-hour windows: ~166k events per window, ~16 per (customer,
meter) window at 1M; --customers 10000 gives the 20k keys of the earlier runs),
into PRIVATE Kafka topics and a fresh Postgres database. Then, on that same input, it runs and
times, one after the other:

  (a) meterflow's metering job, bounded, end to end into Postgres (``run_metering``): the Flink job
      (Kafka -> validation (JVM fast path, Python for other layouts) -> JVM dedup, windows,
      lateness -> Kafka, exactly-once) with the
      ledger writer (Kafka -> Postgres, rating) applying each checkpoint's output alongside it and
      draining the rest after it; timed from the job's submission until the writer is done;
  (b) a JVM-only Flink SQL job: the same source (computed event time + watermark), JSON_VALUE
      extraction, TUMBLE SUM/COUNT/MAX by customer, meter -> blackhole: the practical limit;
  (floor) (b) plus every valid event upserted into a copy of billing.usage_events through the JVM
      JDBC connector: the least any design must do to meet the contract (no Python, no dedup
      state, no checkpoints), i.e. an upper bound for (a) on this machine;
  (c) the plain PyFlink DataStream reference (jobs/flink/reference.py) -> blackhole, on the first
      ``--reference-events`` records (a second private topic), because it is slow.

Every time includes job start-up (mini-cluster, Python workers), as a user would see it.

    .venv/bin/python scripts/bench_metering.py                    # 1M events, parallelism 1
    .venv/bin/python scripts/bench_metering.py --events 200000 --reference-events 50000
    .venv/bin/python scripts/bench_metering.py --profile          # + where (a)'s time goes
    .venv/bin/python scripts/bench_metering.py --flink-conf python.fn-execution.bundle.size=100000

Every job's CPU seconds are recorded too, per part of the local stack (the Flink JVM, this Python
process with the ledger writer, the Kafka broker, Postgres): on a machine with C cores a job that
needs X CPU-seconds cannot finish in less than X / C seconds, however its parts overlap.

``--profile`` adds: the Python contract validator alone on the same payloads (no Flink; in the job
it only sees what the JVM fast path does not claim), and (a)'s Flink job again with no ledger
writer beside it, so (a) splits into "the Flink job" and "what the ledger writer costs it" (the
two share the machine's cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.config import REPO_ROOT, Settings, load_settings

RESULTS = REPO_ROOT / ".local" / "bench" / "metering.md"
SPAN = timedelta(hours=6)


def machine() -> dict:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "mem_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "host": platform.node()}


def load() -> float:
    return round(os.getloadavg()[0], 2)


# --- CPU accounting: on 2 cores, CPU-seconds per event bound the throughput whatever the overlap --


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # state, ppid, ... utime=[11] stime=[12] cutime cstime


def _proc_cpu(pid: int, reaped_children: bool = False) -> float:
    """CPU seconds of a process (all its threads); with the CPU of the children it has waited for."""
    try:
        f = _stat(pid)
    except OSError:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if reaped_children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(_stat(int(d))[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each part of the local stack: this process (producer, ledger
    writer), its child processes (the Flink JVM, with thread-mode Python inside it), the Kafka
    broker and Postgres (the postmaster, its live backends, and the backends it has reaped)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    out = {"python": me.ru_utime + me.ru_stime,
           "flink_jvm": sum(_proc_cpu(c, True) for c in _children(os.getpid()))}
    kafka = _pid_from(REPO_ROOT / ".local" / "stack" / "kafka" / "kafka.pid")
    if kafka:
        out["kafka"] = _proc_cpu(kafka)
    pg = _pid_from(REPO_ROOT / ".local" / "stack" / "postgres" / "data" / "postmaster.pid")
    if pg:
        out["postgres"] = _proc_cpu(pg, True) + sum(_proc_cpu(c) for c in _children(pg))
    return out


@contextmanager
def cpu_used(into: dict):
    """Record into ``into['cpu']`` the CPU seconds each part used while the block ran."""
    before = cpu_seconds()
    yield
    after = cpu_seconds()
    into["cpu"] = {k: round(after[k] - before.get(k, 0.0), 1) for k in after}
    into["cpu"]["total"] = round(sum(into["cpu"].values()), 1)


@contextmanager
def private_settings(partitions: int, parallelism: int, mode: str | None, extra_conf: dict[str, str]):
    """Unique topics / consumer group / checkpoint dir, and a fresh migrated database."""
    from jobs.tools.topics import ensure_topics
    from tests.integration.dbutil import fresh_database
    from tests.integration.metering_util import with_private_names

    tag = f"bench-{secrets.token_hex(4)}"
    base = with_private_names(load_settings(), tag, partitions)
    fl = {"parallelism": parallelism, "checkpoint_dir": str(REPO_ROOT / ".local" / "bench" / "checkpoints" / tag),
          # a failing job must fail the benchmark, not restart forever
          "config": {"restart-strategy.type": "none", **base.flink.config, **extra_conf}}
    if mode:
        fl["python_execution_mode"] = mode
    s = base.model_copy(update={"flink": base.flink.model_copy(update=fl)})
    with fresh_database(s) as s2:
        ensure_topics(s2, timeout_s=3)
        yield s2, tag


def with_topics(settings: Settings, suffix: str) -> Settings:
    """Same events topic, private output topics and consumer group (for extra Flink-only runs)."""
    from jobs.tools.topics import ensure_topics

    t = settings.topics
    g = f"{settings.kafka.consumer_group}-{suffix}"
    s = settings.model_copy(update={
        "topics": t.model_copy(update={"dlq": f"{g}-dlq", "late": f"{g}-late", "ledger": f"{g}-ledger",
                                       "duplicates": f"{g}-dups"}),
        "kafka": settings.kafka.model_copy(update={"consumer_group": g}),
    })
    ensure_topics(s, timeout_s=3)
    return s


def create_topic(settings: Settings, name: str) -> None:
    from jobs.tools.topics import ensure_topics

    ensure_topics(settings.model_copy(update={"topics": settings.topics.model_copy(update={"events": name})}),
                  timeout_s=3)


# --- the three jobs ----------------------------------------------------------------------------


def run_a(settings: Settings) -> dict:
    from jobs.flink.run import run_metering

    t0 = time.monotonic()
    r = run_metering(settings, bounded=True)
    wall = time.monotonic() - t0
    # total = from the job's submission until the ledger writer (running alongside) has drained;
    # wall adds run_metering's set-up
    # (ensure_topics, planning), see docs/PERFORMANCE.md
    return {"flink_s": r.seconds_flink, "ledger_s": r.seconds_ledger,
            "total_s": r.seconds_flink + r.seconds_ledger, "wall_s": wall,
            "events_inserted": r.ledger.events_inserted, "revisions": r.ledger.revisions,
            "charges": r.ledger.charges, "rating_errors": r.ledger.rating_errors,
            "duplicates": r.ledger.duplicates}


def run_a_flink_only(settings: Settings) -> float:
    """(a)'s Flink job alone (Kafka outputs, no ledger writer beside it)."""
    import jobs.flink.metering as m

    t_env, outputs, sinks = m.build_job(settings, bounded=True)
    t0 = time.monotonic()
    m.submit(t_env, outputs, sinks).wait()
    return time.monotonic() - t0


def run_b(settings: Settings, topic: str) -> float:
    from jobs.flink.env import table_environment
    from jobs.flink.metering import _seconds_literal, create_kafka_source

    t_env = table_environment(settings, job_name="bench-jvm-only", checkpointing=False)
    src = create_kafka_source(t_env, settings, bounded=True, name="b_src", topic=topic,
                              startup="earliest-offset")
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW b_events AS
SELECT JSON_VALUE(CAST(`value` AS STRING), '$.customer_id') AS customer_id,
       JSON_VALUE(CAST(`value` AS STRING), '$.meter') AS meter,
       TRY_CAST(JSON_VALUE(CAST(`value` AS STRING), '$.quantity') AS DECIMAL(38, 12)) AS q,
       rowtime
FROM {src}""")
    t_env.execute_sql("""
CREATE TEMPORARY TABLE b_sink (customer_id STRING, meter STRING, window_start TIMESTAMP(3),
  window_end TIMESTAMP(3), qsum DECIMAL(38, 12), qcount BIGINT, qmax DECIMAL(38, 12))
WITH ('connector' = 'blackhole')""")
    t0 = time.monotonic()
    t_env.execute_sql(f"""
INSERT INTO b_sink
SELECT customer_id, meter, window_start, window_end, SUM(q), COUNT(*), MAX(q)
FROM TABLE(TUMBLE(TABLE b_events, DESCRIPTOR(rowtime), {_seconds_literal(settings.time.window_size)}))
WHERE customer_id IS NOT NULL AND meter IS NOT NULL AND q IS NOT NULL
GROUP BY customer_id, meter, window_start, window_end""").wait()
    return time.monotonic() - t0


def run_floor(settings: Settings, topic: str) -> float:
    """(b) plus the one thing the contract adds that no design can skip: every valid event lands in
    Postgres, in a copy of ``billing.usage_events`` (same keys and indexes), through the JVM JDBC
    connector (upserts by event_id, batches of 5,000, ``reWriteBatchedInserts``; the connector
    takes no TIMESTAMP_LTZ, so instants travel as UTC TIMESTAMPs). No Python, no
    dedup state, no checkpoints, no Kafka outputs: a lower bound on (a)'s time on this machine."""
    from psycopg import sql

    from jobs.flink.env import table_environment
    from jobs.flink.metering import _seconds_literal, create_kafka_source
    from tests.integration.dbutil import admin_connect

    # the window start is FLOOR(rowtime TO HOUR): the benchmark's windows are 1 h
    assert settings.time.window_size == timedelta(hours=1), settings.time.window_size
    # the application role creates nothing: the superuser makes the copy and lets it write there
    with admin_connect(settings) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench_floor")
        conn.execute("DROP TABLE IF EXISTS bench_floor.usage_events")
        conn.execute("CREATE TABLE bench_floor.usage_events (LIKE billing.usage_events INCLUDING ALL)")
        app = sql.Identifier(settings.postgres.user)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA bench_floor TO {}").format(app))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON bench_floor.usage_events TO {}").format(app))
        conn.commit()
    pg = settings.postgres
    pw = pg.password.get_secret_value() if pg.password else os.environ.get("PGPASSWORD", "")
    t_env = table_environment(settings, job_name="bench-jvm-floor", checkpointing=False)
    src = create_kafka_source(t_env, settings, bounded=True, name="f_src", topic=topic,
                              startup="earliest-offset")
    v = "CAST(`value` AS STRING)"
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW f_events AS
SELECT JSON_VALUE({v}, '$.event_id') AS event_id,
       JSON_VALUE({v}, '$.customer_id') AS customer_id, JSON_VALUE({v}, '$.meter') AS meter,
       TRY_CAST(JSON_VALUE({v}, '$.quantity') AS DECIMAL(38, 12)) AS q,
       JSON_QUERY({v}, '$.properties') AS properties, rowtime
FROM {src}""")
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE f_pg (event_id STRING, customer_id STRING, meter STRING,
  event_time TIMESTAMP(3), ingestion_time TIMESTAMP(3), quantity DECIMAL(38, 12),
  properties STRING, window_start TIMESTAMP(3), PRIMARY KEY (event_id) NOT ENFORCED)
WITH ('connector' = 'jdbc',
      'url' = '{pg.jdbc_url()}?reWriteBatchedInserts=true&stringtype=unspecified',
      'table-name' = 'bench_floor.usage_events', 'username' = '{pg.user}', 'password' = '{pw}',
      'sink.buffer-flush.max-rows' = '5000', 'sink.buffer-flush.interval' = '1 s')""")
    t_env.execute_sql("""
CREATE TEMPORARY TABLE f_windows (customer_id STRING, meter STRING, window_start TIMESTAMP(3),
  window_end TIMESTAMP(3), qsum DECIMAL(38, 12), qcount BIGINT, qmax DECIMAL(38, 12))
WITH ('connector' = 'blackhole')""")
    valid = "event_id IS NOT NULL AND customer_id IS NOT NULL AND meter IS NOT NULL AND q >= 0"
    ss = t_env.create_statement_set()
    ss.add_insert_sql(f"""
INSERT INTO f_pg
SELECT event_id, customer_id, meter, CAST(rowtime AS TIMESTAMP(3)), LOCALTIMESTAMP, q, properties,
       CAST(FLOOR(rowtime TO HOUR) AS TIMESTAMP(3))
FROM f_events WHERE {valid}""")
    ss.add_insert_sql(f"""
INSERT INTO f_windows
SELECT customer_id, meter, window_start, window_end, SUM(q), COUNT(*), MAX(q)
FROM TABLE(TUMBLE(TABLE f_events, DESCRIPTOR(rowtime), {_seconds_literal(settings.time.window_size)}))
WHERE {valid}
GROUP BY customer_id, meter, window_start, window_end""")
    t0 = time.monotonic()
    ss.execute().wait()
    elapsed = time.monotonic() - t0
    with admin_connect(settings) as conn:
        rows = conn.execute("SELECT count(*) FROM bench_floor.usage_events").fetchone()[0]
        conn.execute("DROP SCHEMA bench_floor CASCADE")
        conn.commit()
    print(f"[bench] floor: {rows} events in Postgres", flush=True)
    return elapsed


def run_c(settings: Settings, topic: str) -> float:
    from pyflink.common import Row, Types

    from jobs.flink.env import table_environment
    from jobs.flink.metering import create_kafka_source
    from jobs.flink.reference import build_reference

    t_env = table_environment(settings, job_name="bench-reference", checkpointing=False)
    src = create_kafka_source(t_env, settings, bounded=True, name="c_src", topic=topic,
                              startup="earliest-offset")
    ref = build_reference(t_env, src, settings)
    vcols = "ok BOOLEAN, reason STRING, event_id STRING, customer_id STRING, meter STRING, " \
            "event_time_ms BIGINT, quantity STRING"
    sinks = {
        "c_windows": "customer_id STRING, meter STRING, window_start_ms BIGINT, window_end_ms BIGINT, "
                     "qsum STRING, qcount BIGINT, qmax STRING, firing INT",
        "c_late": vcols, "c_invalid": vcols, "c_dups": "event_id STRING",
    }
    for name, cols in sinks.items():
        t_env.execute_sql(f"CREATE TEMPORARY TABLE {name} ({cols}) WITH ('connector' = 'blackhole')")
    dups = ref.duplicates.map(lambda e: Row(event_id=e),
                              output_type=Types.ROW_NAMED(["event_id"], [Types.STRING()]))
    ss = t_env.create_statement_set()
    ss.add_insert("c_windows", t_env.from_data_stream(ref.windows))
    ss.add_insert("c_late", t_env.from_data_stream(ref.late))
    ss.add_insert("c_invalid", t_env.from_data_stream(ref.invalid))
    ss.add_insert("c_dups", t_env.from_data_stream(dups))
    t0 = time.monotonic()
    ss.execute().wait()
    return time.monotonic() - t0


def validator_alone(records: list, settings: Settings) -> float:
    """The contract validator in plain Python over the same payloads (no Flink)."""
    from operators.validate import validate_row

    meters = frozenset(settings.meter_aggregations)
    skew = settings.time.max_future_skew
    t0 = time.monotonic()
    for r in records:
        validate_row(r.value, datetime.now(UTC), skew, meters)
    return time.monotonic() - t0


# --- main -------------------------------------------------------------------------------------


def measured(out: dict, key: str, events: int, run) -> None:
    """Run one job (``run`` returns its seconds); record its time, rate, events, CPU and the load
    average before it under ``out[key]``."""
    out["load"][key] = load()
    usage: dict = {}
    with cpu_used(usage):
        s = run()
    out[key] = {"total_s": s, "events": events, "events_per_s": events / s, **usage}
    print(f"[bench] {key} {out[key]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--reference-events", type=int, default=100_000)
    ap.add_argument("--customers", type=int, default=5_000, help="keys = customers x 2 meters")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--mode", choices=("thread", "process"), help="python execution mode (default: config)")
    ap.add_argument("--flink-conf", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Flink configuration for every job (repeatable)")
    ap.add_argument("--skip", default="", help="comma list of a,b,f,c to skip")
    ap.add_argument("--profile", action="store_true", help="also profile (a): see the docstring")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    ap.add_argument("--results", default=str(RESULTS), help="markdown file a dated row is appended to")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.flink_conf)
    skip = set(filter(None, args.skip.split(",")))

    from jobs.tools.produce import send
    from jobs.tools.synthetic import SyntheticSpec, generate
    from tests.integration.metering_util import load_prices

    out: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                 "events": args.events, "reference_events": min(args.reference_events, args.events),
                 "customers": args.customers, "parallelism": args.parallelism, "flink_conf": extra,
                 "span_h": SPAN.total_seconds() / 3600, "load": {"start": load()}}
    with private_settings(args.partitions, args.parallelism, args.mode, extra) as (settings, tag):
        out["python_mode"] = settings.flink.python_execution_mode
        out["window"] = str(settings.time.window_size)
        out["tag"] = tag
        print(f"[bench] {tag}: database {settings.postgres.database}, events topic {settings.topics.events}",
              flush=True)
        start = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        spec = SyntheticSpec(
            count=args.events, seed=args.seed, customers=args.customers,
            meters=("api_calls", "storage_gb_hours"), start=start, span=SPAN,
            out_of_order_share=0.05, max_disorder=timedelta(seconds=3),
            duplicate_share=0.01, invalid_share=0.005, days_late_share=0.001, id_prefix=tag,
        )
        t0 = time.monotonic()
        records = list(generate(spec))
        customers = sorted({f"cust-{i:05d}" for i in range(args.customers)})
        load_prices(settings, customers)
        t1 = time.monotonic()
        kinds = send(settings, records, progress=False)
        m = out["reference_events"]
        ref_topic = f"{tag}-ref-events"
        create_topic(settings, ref_topic)
        send(settings, records[:m], topic=ref_topic, progress=False)
        out["input"] = {k: v for k, v in kinds.items() if ":" not in k}
        out["produce_s"] = round(time.monotonic() - t1, 1)
        out["generate_s"] = round(t1 - t0, 1)
        print(f"[bench] produced {len(records)} (+{m} reference) in {out['produce_s']} s: {out['input']}",
              flush=True)
        n = len(records)

        if "a" not in skip:
            out["load"]["a"] = load()
            usage: dict = {}
            with cpu_used(usage):
                a = run_a(settings)
            a.update(usage)
            a["events_per_s"] = n / a["total_s"]
            a["flink_events_per_s"] = n / a["flink_s"]
            a["ledger_events_per_s"] = n / a["ledger_s"] if a["ledger_s"] else None
            out["a"] = a
            print(f"[bench] (a) {a}", flush=True)
        if "b" not in skip:
            measured(out, "b", n, lambda: run_b(settings, settings.topics.events))
        if "f" not in skip:
            measured(out, "floor", n, lambda: run_floor(settings, settings.topics.events))
        if "c" not in skip:
            measured(out, "c", m, lambda: run_c(settings, ref_topic))
        if args.profile:
            out["load"]["profile"] = load()
            p: dict = {}
            v = validator_alone(records, settings)
            p["validator_alone_s"] = v
            p["validator_alone_us_per_event"] = v / n * 1e6
            print(f"[bench] validator alone: {v:.1f} s", flush=True)
            usage = {}
            with cpu_used(usage):
                p["flink_alone_s"] = run_a_flink_only(with_topics(settings, "alone"))
            p["flink_alone_cpu"] = usage["cpu"]
            print(f"[bench] flink alone: {p['flink_alone_s']:.1f} s", flush=True)
            out["profile"] = p
        out["load"]["end"] = load()

    if "a" in out and "b" in out:
        out["a_over_b"] = out["a"]["events_per_s"] / out["b"]["events_per_s"]
    if "a" in out and "c" in out:
        out["a_over_c"] = out["a"]["events_per_s"] / out["c"]["events_per_s"]
    report(out, args)
    return 0


def report(out: dict, args: argparse.Namespace) -> None:
    mc = out["machine"]
    lines = [
        f"metering benchmark {out['date']}  machine: {mc['nproc']} cpu, {mc['mem_gib']} GiB, python {mc['python']}"
        f"  load avg (1 min) {out['load']}",
        f"parallelism {out['parallelism']}, python mode {out['python_mode']}, window {out['window']}, "
        f"{out['events']:,} events / {out['customers']:,} customers / {out['span_h']:.0f} h event time"
        + (f", flink conf {out['flink_conf']}" if out["flink_conf"] else ""),
        "",
        "| job | events | seconds | events/s |",
        "|---|---:|---:|---:|",
    ]
    if "a" in out:
        a = out["a"]
        lines += [
            f"| (a) meterflow, end to end into Postgres | {out['events']:,} | {a['total_s']:.1f} "
            f"| **{a['events_per_s']:,.0f}** |",
            f"|   (a) Flink job (the ledger writer working alongside) | | {a['flink_s']:.1f} "
            f"| {a['flink_events_per_s']:,.0f} |",
            f"|   (a) ledger writer, after the job finished (it runs alongside the job) | | {a['ledger_s']:.1f} | |",
        ]
    if "b" in out:
        lines.append(f"| (b) JVM-only Flink SQL -> blackhole | {out['events']:,} | {out['b']['total_s']:.1f} | "
                     f"{out['b']['events_per_s']:,.0f} |")
    if "floor" in out:
        lines.append(f"| floor: (b) + every valid event upserted into Postgres (JVM JDBC) | {out['events']:,} | "
                     f"{out['floor']['total_s']:.1f} | {out['floor']['events_per_s']:,.0f} |")
    if "c" in out:
        lines.append(f"| (c) PyFlink DataStream reference -> blackhole | {out['c']['events']:,} | "
                     f"{out['c']['total_s']:.1f} | {out['c']['events_per_s']:,.0f} |")
    if "profile" in out:
        p = out["profile"]
        lines.append(f"| profile: validator alone, plain Python | {out['events']:,} | {p['validator_alone_s']:.1f} | "
                     f"{out['events'] / p['validator_alone_s']:,.0f} |")
        lines.append(f"| profile: (a)'s Flink job alone, no ledger writer beside it | {out['events']:,} | "
                     f"{p['flink_alone_s']:.1f} | {out['events'] / p['flink_alone_s']:,.0f} |")
    cpu_rows = []
    # (a)'s CPU includes run_metering's set-up (planning, topics): divide by the wall time that does too
    for label, key, wall_key in (("(a)", "a", "wall_s"), ("(b)", "b", "total_s"), ("floor", "floor", "total_s"),
                                 ("(c)", "c", "total_s")):
        if key in out and "cpu" in out[key]:
            events = out["c"]["events"] if key == "c" else out["events"]
            cpu_rows.append((label, out[key]["cpu"], out[key][wall_key], events))
    if "profile" in out and "flink_alone_cpu" in out["profile"]:
        cpu_rows.append(("(a)'s Flink job alone", out["profile"]["flink_alone_cpu"], out["profile"]["flink_alone_s"],
                         out["events"]))
    if cpu_rows:
        lines += ["", "| job | CPU-s | cores busy | CPU µs/event | Flink JVM | Python | Kafka | Postgres |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, cpu, wall, events in cpu_rows:
            lines.append(f"| {label} | {cpu['total']:.1f} | {cpu['total'] / wall:.2f} "
                         f"| {cpu['total'] / events * 1e6:.0f} | "
                         f"{cpu.get('flink_jvm', 0):.1f} | {cpu.get('python', 0):.1f} | {cpu.get('kafka', 0):.1f} | "
                         f"{cpu.get('postgres', 0):.1f} |")
    ratios = []
    if "a_over_b" in out:
        ratios.append(f"a/b = {out['a_over_b']:.2f}")
    if "a" in out and "floor" in out:
        ratios.append(f"a/floor = {out['a']['events_per_s'] / out['floor']['events_per_s']:.2f}")
    if "a_over_c" in out:
        ratios.append(f"a/c = {out['a_over_c']:.1f}")
    lines += ["", "  ".join(ratios)]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    res = Path(args.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    new = not res.exists()
    with res.open("a") as f:
        if new:
            f.write("| date | events | p | mode | load | a ev/s | a flink s | a ledger s | b ev/s | c ev/s "
                    "| a/b | a/c | conf |\n"
                    "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
        a, b, c = out.get("a", {}), out.get("b", {}), out.get("c", {})
        f.write(f"| {out['date']} | {out['events']} | {out['parallelism']} | {out['python_mode']} | "
                f"{out['load']} | {a.get('events_per_s', 0):.0f} | {a.get('flink_s', 0):.1f} | "
                f"{a.get('ledger_s', 0):.1f} | {b.get('events_per_s', 0):.0f} | {c.get('events_per_s', 0):.0f} | "
                f"{out.get('a_over_b', 0):.2f} | {out.get('a_over_c', 0):.1f} | {out['flink_conf'] or ''} |\n")


if __name__ == "__main__":
    raise SystemExit(main())
