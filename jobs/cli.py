"""The ``meterflow`` command line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from schemas.config import REPO_ROOT, ConfigError, Settings, load_settings, parse_duration

app = typer.Typer(
    name="meterflow",
    help="Usage-based metering, rating and invoicing on Apache Flink.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The local Kafka + PostgreSQL stack (scripts/stack.sh).", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
schema_app = typer.Typer(help="Contracts: JSON Schemas.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(db_app, name="db")
app.add_typer(schema_app, name="schema")

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="TOML config file (default: $METERFLOW_CONFIG, "
                 "config/meterflow.toml, else the shipped example)."),
]


def settings_or_exit(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None


def _stack_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    env.setdefault("METERFLOW_KAFKA_PORT", port)
    env.setdefault("METERFLOW_PG_PORT", str(settings.postgres.port))
    env.setdefault("METERFLOW_TOPIC_PARTITIONS", str(settings.topics.partitions))
    env.setdefault("METERFLOW_TOPIC_EVENTS", settings.topics.events)
    env.setdefault("METERFLOW_TOPIC_DLQ", settings.topics.dlq)
    env.setdefault("METERFLOW_TOPIC_LATE", settings.topics.late)
    return env


def _run_stack(action: str, config: Path | None) -> None:
    settings = settings_or_exit(config)
    script = REPO_ROOT / "scripts" / "stack.sh"
    rc = subprocess.call(["bash", str(script), action], env=_stack_env(settings))
    raise typer.Exit(rc)


@stack_app.command("up")
def stack_up(config: ConfigOpt = None) -> None:
    """Start Kafka (KRaft) and PostgreSQL on loopback, create the topics; idempotent."""
    _run_stack("up", config)


@stack_app.command("down")
def stack_down(config: ConfigOpt = None) -> None:
    """Stop the processes this stack started (by their recorded PIDs)."""
    _run_stack("down", config)


@stack_app.command("status")
def stack_status(config: ConfigOpt = None) -> None:
    """One line per server; exit code 1 when any is stopped."""
    _run_stack("status", config)


cluster_app = typer.Typer(
    help="A local standalone Flink cluster from the apache-flink wheel (scripts/cluster.sh): "
         "conf, logs, pids under .local/cluster.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


def _run_cluster(*args: str) -> None:
    rc = subprocess.call(["bash", str(REPO_ROOT / "scripts" / "cluster.sh"), *args])
    raise typer.Exit(rc)


@cluster_app.command("up")
def cluster_up() -> None:
    """Start a JobManager and a TaskManager (2 slots); idempotent. Ports: METERFLOW_CLUSTER_*."""
    _run_cluster("up")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop the JobManager and TaskManager (by their recorded pids)."""
    _run_cluster("down")


@cluster_app.command("status")
def cluster_status() -> None:
    """One line per process and the REST address; exit code 3 when something is stopped."""
    _run_cluster("status")


@cluster_app.command(
    "flink", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def cluster_flink(ctx: typer.Context) -> None:
    """Flink's CLI against the local cluster, e.g. `meterflow cluster flink run -py jobs/metering.py
    -pyfs jobs,operators,pricing,schemas,sinks`; `flink stop`, `flink list` …"""
    _run_cluster("flink", *ctx.args)


@db_app.command("migrate")
def db_migrate(config: ConfigOpt = None) -> None:
    """Apply pending SQL migrations to schema billing (a no-op when up to date), connected as
    postgres.migration_user (the owner); every other command connects as postgres.user."""
    import psycopg

    from sinks.db import connect
    from sinks.migrate import MigrationError, migrate

    settings = settings_or_exit(config)
    try:
        with connect(settings, migration=True) as conn:  # as the owner of schema billing
            applied = migrate(conn)
    except MigrationError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    except psycopg.Error as e:  # cannot connect, or the role may not migrate (V007's hint)
        diag = getattr(e, "diag", None)
        hint = f" ({diag.message_hint})" if diag is not None and diag.message_hint else ""
        if not hint and isinstance(e, psycopg.errors.InsufficientPrivilege):
            hint = (f" ({settings.postgres.migration_user} must own schema billing; a database "
                    "migrated before V007 needs one `METERFLOW__POSTGRES__MIGRATION_USER=postgres "
                    "meterflow db migrate` as the superuser)")
        err.print(f"[red]db migrate as {settings.postgres.migration_user}: "
                  f"{str(e).strip().splitlines()[0]}{hint}[/]")
        raise typer.Exit(1) from None
    if applied:
        for m in applied:
            console.print(f"applied V{m.version:03d}__{m.name}")
    else:
        console.print("schema billing is up to date")


@schema_app.command("event")
def schema_event(
    out: Annotated[Optional[Path], typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of the usage event (generated from the pydantic model)."""
    from schemas.event import event_json_schema

    text = json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@app.command("produce")
def produce(
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="JSON-lines file to send.")] = None,
    count: Annotated[int, typer.Option("--count", "-n", help="Synthetic events to send.")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed (reproducible runs).")] = 42,
    customers: Annotated[int, typer.Option(help="Distinct customers.")] = 100,
    meters: Annotated[str, typer.Option(help="Comma-separated meters (default: all declared).")] = "",
    start: Annotated[str, typer.Option(help="First event_time, RFC 3339.")] = "2026-11-01T00:00:00Z",
    span: Annotated[str, typer.Option(help="Event-time span of the run, e.g. 1d, 6h.")] = "1d",
    out_of_order: Annotated[float, typer.Option(help="Share of events slightly out of order.")] = 0.05,
    days_late: Annotated[float, typer.Option(help="Share of events days late.")] = 0.0,
    duplicates: Annotated[float, typer.Option(help="Share of duplicate events.")] = 0.0,
    invalid: Annotated[float, typer.Option(help="Share of invalid events.")] = 0.0,
    topic: Annotated[Optional[str], typer.Option(help="Override the events topic.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Send a JSON-lines file, or N synthetic events, to usage-events (key = customer_id)."""
    from jobs.produce import records_from_jsonl, send
    from jobs.synthetic import SyntheticSpec, generate
    from schemas.event import parse_event_time

    settings = settings_or_exit(config)
    if bool(file) == bool(count):
        err.print("[red]give exactly one of --file or --count[/]")
        raise typer.Exit(2)
    if file:
        records = records_from_jsonl(file)
        total = None
    else:
        spec = SyntheticSpec(
            count=count,
            seed=seed,
            customers=customers,
            meters=tuple(m for m in meters.split(",") if m) or tuple(settings.meter_aggregations),
            start=parse_event_time(start),
            span=parse_duration(span),
            out_of_order_share=out_of_order,
            days_late_share=days_late,
            duplicate_share=duplicates,
            invalid_share=invalid,
        )
        records = generate(spec)
        total = count
    counts = send(settings, records, topic=topic, total=total)
    table = Table("kind", "records", title="produced")
    for k, v in sorted(counts.items()):
        table.add_row(k, str(v))
    console.print(table)


run_app = typer.Typer(help="Run meterflow's streaming jobs (embedded Flink mini-cluster).",
                      no_args_is_help=True)
app.add_typer(run_app, name="run")


@run_app.command("metering")
def run_metering_cmd(
    bounded: Annotated[bool, typer.Option("--bounded", help="Read up to the offsets present at "
                                          "start, flush every window, apply, and stop.")] = False,
    parallelism: Annotated[Optional[int], typer.Option(help="Override flink.parallelism.")] = None,
    restore: Annotated[Optional[str], typer.Option(
        help="Restore from a checkpoint/savepoint path, or 'latest' (newest under flink.checkpoint_dir).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Kafka usage-events -> validation, dedup, windows -> Postgres (via the ledger writer)."""
    from jobs.run import LedgerWriterFailed, RestoreError, run_metering
    from sinks.consumer import PostgresOutage

    settings = settings_or_exit(config)
    try:
        r = run_metering(settings, bounded=bounded, parallelism=parallelism, restore=restore)
    except RestoreError as e:
        err.print(f"[red]cannot restore: {e}[/]")
        raise typer.Exit(2) from None
    except (LedgerWriterFailed, PostgresOutage) as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    table = Table("", "value", title="metering run")
    table.add_row("flink job (s)", f"{r.seconds_flink:.1f}")
    table.add_row("ledger writer (s)", f"{r.seconds_ledger:.1f}")
    table.add_row("events accepted (new)", str(r.ledger.events_inserted))
    table.add_row("window revisions", str(r.ledger.revisions))
    table.add_row("charges", str(r.ledger.charges))
    table.add_row("rating errors", str(r.ledger.rating_errors))
    table.add_row("event ids with duplicates", str(r.ledger.duplicates))
    table.add_row("ledger dead letters", str(r.ledger.dead_letters))
    console.print(table)


@run_app.command("ledger")
def run_ledger_cmd(
    bounded: Annotated[bool, typer.Option("--bounded", help="Read every partition up to the end "
                                          "offsets present at start, then stop (one writer).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Only the ledger writer (when the metering job runs on a Flink cluster). Streaming, every
    instance joins the consumer group [ledger] group_id and applies the partitions it is
    assigned: run as many as the ledger topic has partitions. Exits 1 when PostgreSQL stays
    unreachable past [ledger] outage_exit_after (restart it: it resumes at Postgres's offsets)."""
    import logging
    import signal
    import threading

    from jobs.run import run_ledger_writer
    from sinks.consumer import PostgresOutage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = settings_or_exit(config)
    stop = threading.Event()  # SIGTERM / SIGINT: finish the batch in hand, then exit 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        r = run_ledger_writer(settings, bounded=bounded, stop=stop.is_set)
    except PostgresOutage as e:
        err.print(f"[red]ledger writer stopped: {e}[/]")
        raise typer.Exit(1) from None
    console.print(r)


def _mount_optional() -> None:
    """Sub-commands that live in their own modules."""
    if importlib.util.find_spec("jobs.cli_pricing"):
        from jobs.cli_pricing import customers_app, pricebook_app, taxes_app

        app.add_typer(pricebook_app, name="pricebook")
        app.add_typer(customers_app, name="customers")
        app.add_typer(taxes_app, name="taxes")
    if importlib.util.find_spec("jobs.cli_rerating"):
        from jobs.cli_rerating import rerate, run_rerating_cmd

        run_app.command("rerating")(run_rerating_cmd)
        app.command("rerate")(rerate)
    if importlib.util.find_spec("jobs.cli_billing"):
        from jobs.cli_billing import export_app, invoice, reconcile

        app.command("invoice")(invoice)
        app.command("reconcile")(reconcile)
        app.add_typer(export_app, name="export")
    app.add_typer(importlib.import_module("cli.watermarks").watermarks_app, name="watermarks")  # TEMP


_mount_optional()


def main() -> None:  # console script entry point
    app()


if __name__ == "__main__":
    main()
