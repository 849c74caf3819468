"""``meterflow produce`` and ``meterflow run``: feed the events topic, run the streaming jobs."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.options import (
    ConfigOpt,
    RichProgress,
    clear_errors,
    console,
    err,
    fail_text,
    preflight_database,
    preflight_kafka,
    settings_or_exit,
)
from schemas.config import parse_duration


def produce(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="JSON-lines file to send.")] = None,
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
    topic: Annotated[str | None, typer.Option(help="Override the events topic.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Send a JSON-lines file, or N synthetic events, to usage-events (key = customer_id). The
    topic must exist (`meterflow topics create`)."""
    from jobs.tools.produce import records_from_jsonl, send
    from jobs.tools.synthetic import SyntheticSpec, generate
    from jobs.tools.topics import require_topics
    from schemas.event import parse_event_time

    settings = settings_or_exit(config)
    if bool(file) == bool(count):
        err.print("[red]give exactly one of --file or --count[/]")
        raise typer.Exit(2)
    if file and not file.is_file():
        fail_text(f"--file {file}: no such file", 2)
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
    target = topic or settings.topics.events
    preflight_kafka(settings)
    with clear_errors(settings):
        # before the first send: the broker would auto-create a missing topic with its own
        # num.partitions, whatever topics.partitions says
        require_topics(settings, [target])
        counts = send(settings, records, topic=target, total=total, progress=RichProgress())
    table = Table("kind", "records", title="produced")
    for k, v in sorted(counts.items()):
        table.add_row(k, str(v))
    console.print(table)


run_app = typer.Typer(help="Run meterflow's streaming jobs (embedded Flink mini-cluster).",
                      no_args_is_help=True)


@run_app.command("metering")
def run_metering_cmd(
    bounded: Annotated[bool, typer.Option("--bounded", help="Read up to the offsets present at "
                                          "start, flush every window, apply, and stop.")] = False,
    parallelism: Annotated[int | None, typer.Option(help="Override flink.parallelism.")] = None,
    restore: Annotated[str | None, typer.Option(
        help="Restore from a checkpoint/savepoint path, or 'latest' (newest under flink.checkpoint_dir).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Kafka usage-events -> validation, dedup, windows -> Postgres (via the ledger writer)."""
    from jobs.flink.run import LedgerWriterFailed, RestoreError, check_restore, run_metering
    from sinks.batchloop import PostgresOutage

    settings = settings_or_exit(config)
    try:
        check_restore(settings, bounded=bounded, restore=restore)  # a usage error comes first
    except RestoreError as e:
        err.print(f"[red]cannot restore: {e}[/]")
        raise typer.Exit(2) from None
    preflight_database(settings)
    preflight_kafka(settings)
    try:
        with clear_errors(settings):
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


def _consumer_process() -> threading.Event:
    """A long-running consumer command: log lines to stderr, and an event that SIGTERM / SIGINT set
    (the consumer finishes the batch in hand, then exits 0)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


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
    from jobs.flink.run import run_ledger_writer
    from sinks.batchloop import PostgresOutage

    settings = settings_or_exit(config)
    stop = _consumer_process()
    preflight_database(settings)
    preflight_kafka(settings)
    try:
        with clear_errors(settings):
            r = run_ledger_writer(settings, bounded=bounded, stop=stop.is_set)
    except PostgresOutage as e:
        err.print(f"[red]ledger writer stopped: {e}[/]")
        raise typer.Exit(1) from None
    console.print(r)


@run_app.command("dead-letters")
def run_dead_letters_cmd(
    bounded: Annotated[bool, typer.Option("--bounded", help="Copy up to the end offsets present "
                                          "at start, then stop.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Copy the metering job's dead letters (topics.dlq) into billing.dead_letters, exactly once,
    so rejections can be counted per period and reason in Postgres (billing.v_rejections)."""
    from jobs.consumers.dead_letters import run_dead_letters
    from sinks.batchloop import PostgresOutage

    settings = settings_or_exit(config)
    stop = _consumer_process()
    preflight_kafka(settings)
    try:
        n = run_dead_letters(settings, bounded=bounded, stop=stop.is_set)
    except PostgresOutage as e:
        err.print(f"[red]dead-letter copier stopped: {e}[/]")
        raise typer.Exit(1) from None
    console.print(f"{n} dead letters copied into billing.dead_letters")
