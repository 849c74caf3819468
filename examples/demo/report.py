"""Helpers for scripts/demo.sh: create the demo's database and topics, and print what each stage
left in Kafka and PostgreSQL. Settings come from the environment (METERFLOW__SECTION__KEY), as
for every meterflow command, so this reads exactly the database and topics the demo run uses.

    python examples/demo/report.py createdb             # CREATE DATABASE <postgres.database>
    python examples/demo/report.py topics               # create the run's topics
    python examples/demo/report.py counts               # input / accepted / duplicates / rejected / late
    python examples/demo/report.py windows              # windows with their revisions
    python examples/demo/report.py charges              # charges per customer + one explanation
    python examples/demo/report.py dlq                  # DLQ reason counts (read_committed)
    python examples/demo/report.py late                 # the late side output + late_event charges
    python examples/demo/report.py invoices PERIOD      # billing.v_invoices and their lines
    python examples/demo/report.py clean                # drop every meterflow_demo_* database
                                                        # and delete every demo-* topic
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, for `python examples/demo/report.py`

import psycopg
from kafka import KafkaConsumer, TopicPartition
from psycopg import sql
from rich.console import Console
from rich.table import Table

from schemas.config import Settings, load_settings
from sinks.db import connect

ROOT = Path(__file__).resolve().parents[2]

console = Console(width=140)
DEMO_DB_PREFIX = "meterflow_demo_"
DEMO_TOPIC_PREFIX = "demo-"


def _admin_conn(s: Settings) -> psycopg.Connection:
    """The superuser (databases are created and dropped by it; meterflow's roles cannot),
    its password from libpq's PGPASSFILE (the stack's, see docs/STACK.md)."""
    pg = s.postgres.model_copy(update={"database": "postgres", "password": None,
                                       "user": os.environ.get("METERFLOW_PG_SUPERUSER", "postgres")})
    return psycopg.connect(pg.conninfo(), autocommit=True)


def createdb(s: Settings) -> None:
    name = s.postgres.database
    with _admin_conn(s) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            console.print(f"database {name} exists already")
            return
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(s.postgres.migration_user)))
    console.print(f"created database [bold]{name}[/]")


def topics(s: Settings) -> None:
    """Create the run's topics (same specs as jobs/tools/topics.py) and wait until each has a leader."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from jobs.tools.topics import topic_specs

    specs = topic_specs(s)
    admin = KafkaAdminClient(bootstrap_servers=s.kafka.bootstrap_servers,
                             client_id="meterflow-demo", request_timeout_ms=10_000)
    try:
        missing = [n for n in specs if n not in set(admin.list_topics())]
        if missing:
            admin.create_topics([NewTopic(n, s.topics.partitions, 1, topic_configs=specs[n])
                                 for n in missing])
        deadline = time.monotonic() + 30
        while True:
            described = admin.describe_topics(list(specs))
            if all(d.get("error_code", 0) == 0 and d.get("partitions")
                   and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in d["partitions"])
                   for d in described):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"topics not ready after 30 s: {described}")
            time.sleep(0.2)
    finally:
        admin.close()
    console.print(f"created topics: {', '.join(missing) or '(all existed)'} "
                  f"({s.topics.partitions} partition(s) each)")


def read_topic(s: Settings, topic: str, timeout_s: float = 10.0) -> list[Any]:
    """Every committed record of ``topic`` (read_committed), values decoded as JSON when possible."""
    consumer = KafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    out: list[Any] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return out
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)  # the last stable offsets under read_committed
        pending = {tp for tp in tps if consumer.position(tp) < end[tp]}
        while pending:
            batch = consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=10_000)
            if not batch:
                break
            for records in batch.values():
                for r in records:
                    try:
                        out.append(json.loads(r.value))
                    except ValueError:
                        out.append(r.value)
            for tp in list(pending):
                if consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    finally:
        consumer.close()
    return out


def topic_size(s: Settings, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka.bootstrap_servers, group_id=None,
                             isolation_level="read_committed")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return sum(end[tp] - begin[tp] for tp in tps)
    finally:
        consumer.close()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    if isinstance(v, Decimal):
        return f"{v.normalize():f}" if v == v.to_integral_value() else f"{v:f}".rstrip("0")
    return str(v)


def _table(title: str, cols: list[str], rows: list[tuple]) -> None:
    t = Table(*cols, title=title, title_justify="left")
    for r in rows:
        t.add_row(*(_cell(v) for v in r))
    console.print(t)


def counts(s: Settings) -> None:
    inp = topic_size(s, s.topics.events)  # the producer is not transactional: offsets = records
    rejected = len(read_topic(s, s.topics.dlq))
    late = len(read_topic(s, s.topics.late))
    with connect(s) as conn:
        accepted, accepted_late = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE source = 'late') FROM usage_events"
        ).fetchone()
        dups = conn.execute("SELECT coalesce(sum(duplicates), 0) FROM duplicate_counts").fetchone()[0]
    # A late event that re-rating folded in is in usage_events too (source 'late'): count it once.
    pending_late = late - accepted_late
    rows = [
        ("input records (usage-events)", inp),
        ("accepted (billing.usage_events)", accepted),
        ("  of which folded in from the late topic", accepted_late),
        ("duplicates (billing.duplicate_counts)", dups),
        ("rejected (DLQ topic)", rejected),
        ("beyond allowed lateness (late topic)", late),
    ]
    _table("conservation", ["", "events"], rows)
    total = accepted + dups + rejected + max(pending_late, 0)
    ok = total == inp
    console.print(
        f"input {inp} {'=' if ok else '!='} accepted {accepted} + duplicates {dups} + rejected "
        f"{rejected} + late not yet folded in {max(pending_late, 0)}  "
        + ("[green]ties out[/]" if ok else "[red]DOES NOT TIE OUT[/]"))


def windows(s: Settings) -> None:
    with connect(s) as conn:
        revised = conn.execute(
            """SELECT a.customer_id, a.meter, a.window_start, a.window_end, a.revision, a.quantity,
                      a.event_count, a.source
                 FROM aggregated_usage a
                 JOIN (SELECT customer_id, meter, window_start FROM aggregated_usage
                        GROUP BY 1, 2, 3 HAVING max(revision) > 1
                        ORDER BY 3, 1, 2 LIMIT 4) r USING (customer_id, meter, window_start)
                ORDER BY a.window_start, a.customer_id, a.meter, a.revision""").fetchall()
        n_windows, n_revs = conn.execute(
            "SELECT count(DISTINCT (customer_id, meter, window_start)), count(*) "
            "FROM aggregated_usage").fetchone()
        sample = conn.execute(
            """SELECT customer_id, meter, window_start, window_end, revisions, quantity, event_count,
                      last_source
                 FROM v_current_usage ORDER BY window_start, customer_id, meter LIMIT 3""").fetchall()
    console.print(f"{n_windows} windows, {n_revs} revisions in billing.aggregated_usage")
    cols = ["customer", "meter", "window_start", "window_end", "revision", "quantity", "events",
            "source"]
    if revised:
        _table("windows that were revised (late events within allowed lateness)", cols, revised)
    else:
        console.print("[yellow]no window has a second revision in this run[/]")
    _table("first windows (billing.v_current_usage)", cols, sample)


def charges(s: Settings) -> None:
    with connect(s) as conn:
        per_customer = conn.execute(
            """SELECT customer_id, currency, count(*), sum(quantity_delta) FILTER (WHERE meter = 'api_calls'),
                      round(sum(amount), 6),
                      string_agg(DISTINCT cause, ', ' ORDER BY cause)
                 FROM rated_charges GROUP BY 1, 2 ORDER BY 1""").fetchall()
        errors = conn.execute("SELECT count(*) FROM rating_errors").fetchone()[0]
        one = conn.execute(
            """SELECT charge_id, customer_id, meter, window_start, revision, cause, caused_by,
                      quantity_delta, amount, price_book_id, price_version, calculation
                 FROM rated_charges
                ORDER BY (cause = 'late_revision') DESC, (meter = 'api_calls') DESC, window_start,
                         customer_id, revision
                LIMIT 1""").fetchone()
    _table("charges per customer (billing.rated_charges, unrounded)",
           ["customer", "currency", "charges", "api_calls qty", "Σ amount", "causes"], per_customer)
    console.print(f"rating errors: {errors}")
    if one:
        head = dict(zip(["charge_id", "customer_id", "meter", "window_start", "revision", "cause",
                         "caused_by", "quantity_delta", "amount", "price_book_id",
                         "price_version"], one[:-1], strict=True))
        console.print("one charge and its explanation (rated_charges.calculation):")
        console.print_json(json.dumps({**head, "calculation": one[-1]}, default=str))


def dlq(s: Settings) -> None:
    recs = read_topic(s, s.topics.dlq)
    reasons = Counter(r.get("reason") if isinstance(r, dict) else "(not JSON)" for r in recs)
    _table(f"DLQ {s.topics.dlq}: {len(recs)} records by reason", ["reason", "records"],
           sorted(reasons.items()))
    if recs and isinstance(recs[0], dict):
        r = recs[0]
        console.print("first DLQ record: " + json.dumps(
            {k: r.get(k) for k in ("reason", "message", "payload", "src_partition", "src_offset")}))


def late(s: Settings) -> None:
    recs = [r for r in read_topic(s, s.topics.late) if isinstance(r, dict)]
    console.print(f"late topic {s.topics.late}: {len(recs)} events beyond allowed lateness")
    rows = [(r.get("event_id"), r.get("customer_id"), r.get("meter"), r.get("quantity"),
             r.get("window_start_ms"), r.get("watermark")) for r in recs[:5]]
    if rows:
        _table("first late events", ["event_id", "customer", "meter", "quantity",
                                      "window_start_ms", "watermark at routing"], rows)
    with connect(s) as conn:
        fixes = conn.execute(
            """SELECT customer_id, meter, window_start, revision, cause, caused_by, quantity_delta,
                      round(amount, 6)
                 FROM rated_charges WHERE cause IN ('late_event', 'rerate')
                ORDER BY created_at, window_start LIMIT 8""").fetchall()
        n = conn.execute("SELECT count(*) FROM rated_charges WHERE cause IN ('late_event', 'rerate')"
                         ).fetchone()[0]
    if fixes:
        _table(f"correction charges from re-rating ({n})",
               ["customer", "meter", "window_start", "revision", "cause", "caused_by", "Δ qty",
                "amount"], fixes)
    else:
        console.print("no late_event charges (yet)")


def invoices(s: Settings, period: str) -> None:
    with connect(s) as conn:
        rows = conn.execute(
            """SELECT invoice_number, customer_id, kind, status, corrects_invoice_number, currency,
                      subtotal, credits_applied, tax_rate, tax, total
                 FROM v_invoices WHERE period_start = (%s || '-01')::timestamptz
                ORDER BY invoice_number NULLS LAST, customer_id""", (period,)).fetchall()
        lines = conn.execute(
            """SELECT invoice_number, meter, quantity, amount_precise, amount, charge_count
                 FROM v_invoice_lines_explained WHERE period_start = (%s || '-01')::timestamptz
                ORDER BY invoice_number, meter LIMIT 6""", (period,)).fetchall()
    _table(f"invoices {period} (billing.v_invoices)",
           ["number", "customer", "kind", "status", "corrects", "cur", "subtotal", "credits",
            "tax rate", "tax", "total"], rows)
    _table("first invoice lines (billing.v_invoice_lines_explained)",
           ["number", "meter", "quantity", "amount (precise)", "amount", "charges"], lines)


def clean(s: Settings) -> None:
    from kafka.admin import KafkaAdminClient

    with _admin_conn(s) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
            (DEMO_DB_PREFIX + "%",)).fetchall()]
        for n in names:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                sql.Identifier(n)))
    admin = KafkaAdminClient(bootstrap_servers=s.kafka.bootstrap_servers)
    try:
        demo_topics = [t for t in admin.list_topics() if t.startswith(DEMO_TOPIC_PREFIX)]
        if demo_topics:
            admin.delete_topics(demo_topics)
    finally:
        admin.close()
    console.print(f"dropped {len(names)} demo database(s), deleted {len(demo_topics)} demo topic(s)")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    s = load_settings()
    cmd, args = argv[0], argv[1:]
    fn = {"createdb": createdb, "topics": topics, "counts": counts, "windows": windows,
          "charges": charges, "dlq": dlq, "late": late, "invoices": invoices,
          "clean": clean}.get(cmd)
    if fn is None:
        print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
        return 2
    fn(s, *args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
