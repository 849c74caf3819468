"""Billing commands for the ``meterflow`` CLI: ``invoice``, ``reconcile``, ``export invoices``.

The main CLI (cli/app.py) mounts them::

    from cli.billing import invoice, reconcile, export_app
    app.command("invoice")(invoice)
    app.command("reconcile")(reconcile)
    app.add_typer(export_app, name="export")

Each is also runnable alone: ``python -m cli.billing invoice --period 2026-01``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="meterflow TOML config (default: see docs)")
]
PeriodOpt = Annotated[str, typer.Option("--period", help="billing period, YYYY-MM (UTC month)")]


def _settings(config: Path | None):
    from schemas.config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


def _period(text: str):
    from jobs.batch.invoicing import parse_period

    try:
        return parse_period(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--period") from None


def invoice(
    period: PeriodOpt,
    customer: Annotated[
        list[str] | None, typer.Option("--customer", help="only these customers (repeatable)")
    ] = None,
    issue: Annotated[
        bool, typer.Option("--issue", help="issue the drafts: assign gapless numbers, set issued_at")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    config: ConfigOpt = None,
) -> None:
    """Build draft invoices (and correction invoices / credit notes) for a period from rated charges."""
    from jobs.batch.invoicing import InvoicingError, run_invoicing
    from sinks.db import connect

    settings = _settings(config)
    p = _period(period)
    try:
        with connect(settings, autocommit=True, application_name="meterflow-invoice") as conn:
            res = run_invoicing(conn, p, customer or None, issue=issue, progress=not quiet)
    except InvoicingError as e:
        console.print(f"[red]invoice: {e}[/red]")
        raise typer.Exit(1) from None
    for c, why in sorted(res.failed.items()):
        console.print(f"[red]invoice: customer {c} not invoiced: {why}[/red]")
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(res.documents.items())) or "none"
    console.print(
        f"period {p.label}: {res.new_charges} new charges; {res.charges_invoiced} charges invoiced "
        f"in {res.build_seconds:.2f}s ({res.charges_per_second:,.0f} charges/s); "
        f"drafts built: {kinds}; rebuilt: {res.drafts_rebuilt}; issued: {len(res.issued)}"
    )
    if res.issued and not quiet:
        t = Table("invoice_id", "invoice_number", title="issued")
        for iid, num in res.issued[:50]:
            t.add_row(str(iid), num)
        if len(res.issued) > 50:
            t.add_row("…", f"{len(res.issued) - 50} more")
        out.print(t)
    if res.failed:
        raise typer.Exit(1)


def reconcile(
    period: PeriodOpt,
    kafka: Annotated[
        bool,
        typer.Option(
            "--kafka/--no-kafka",
            help="count the input, DLQ and late topics in Kafka for check (a) (default: on)",
        ),
    ] = True,
    kafka_timeout: Annotated[
        float, typer.Option("--kafka-timeout", help="seconds to wait for Kafka")
    ] = 10.0,
    config: ConfigOpt = None,
) -> None:
    """Prove every stage ties out for a period; exit 1 naming the (customer, meter) on a mismatch."""
    from jobs.batch.reconcile import print_report, run_reconcile
    from sinks.db import connect

    settings = _settings(config)
    p = _period(period)
    with connect(settings, autocommit=True, application_name="meterflow-reconcile") as conn:
        report = run_reconcile(conn, settings, p, use_kafka=kafka, kafka_timeout=kafka_timeout)
    print_report(report, out)
    if not report.ok:
        raise typer.Exit(1)


export_app = typer.Typer(help="Export billing documents.", no_args_is_help=True)


@export_app.command("invoices")
def export_invoices(
    period: PeriodOpt,
    format: Annotated[str, typer.Option("--format", help="csv | json | parquet")] = "csv",
    out_path: Annotated[
        Path | None, typer.Option("--out", help="output file (default invoices-YYYY-MM.<format>)")
    ] = None,
    status: Annotated[
        str, typer.Option("--status", help="issued | draft | all (default all)")
    ] = "all",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    config: ConfigOpt = None,
) -> None:
    """Write the invoices of a period with their lines as CSV, JSON or Parquet."""
    from jobs.batch.export import FORMATS, STATUSES, export_invoices as run_export
    from sinks.db import connect

    if format not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    if status not in STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(STATUSES)}", param_hint="--status")
    settings = _settings(config)
    p = _period(period)
    path = out_path or Path(f"invoices-{p.label}.{format}")
    with connect(settings, autocommit=True, application_name="meterflow-export") as conn:
        n_inv, n_lines = run_export(conn, p, format, path, status=status, progress=not quiet)
    console.print(f"wrote {n_inv} invoices, {n_lines} lines to {path}")


# Standalone apps (python -m cli.billing …, python -m jobs.batch.invoicing …)
invoice_app = typer.Typer(add_completion=False)
invoice_app.command()(invoice)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="meterflow billing commands")
app.command("invoice")(invoice)
app.command("reconcile")(reconcile)
app.add_typer(export_app, name="export")

if __name__ == "__main__":
    app()
