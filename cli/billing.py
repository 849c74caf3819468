"""Billing commands for the ``meterflow`` CLI: ``invoice``, ``reconcile``, ``export invoices``.

The main CLI (cli/app.py) mounts them::

    from cli.billing import invoice, reconcile, export_app
    app.command("invoice")(invoice)
    app.command("reconcile")(reconcile)
    app.add_typer(export_app, name="export")

"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.options import ConfigOpt, PeriodOpt, RichProgress, connected, err, preflight_kafka, settings_or_exit
from cli.options import console as stdout_console
from jobs.batch.reconcile import ReconcileReport

console = err  # progress and messages go to stderr; tables and documents to stdout
out = stdout_console
_settings = settings_or_exit


def _period(text: str):
    from pricing.periods import parse_period

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

    settings = _settings(config)
    p = _period(period)
    try:
        with connected(settings, autocommit=True, application_name="meterflow-invoice") as conn:
            res = run_invoicing(conn, p, customer or None, issue=issue, progress=RichProgress(not quiet),
                                payment_terms_days=settings.billing.payment_terms_days)
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
    from jobs.batch.reconcile import run_reconcile

    settings = _settings(config)
    p = _period(period)
    if kafka:
        preflight_kafka(settings)
    with connected(settings, autocommit=True, application_name="meterflow-reconcile") as conn:
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
    from jobs.batch.export import FORMATS, STATUSES
    from jobs.batch.export import export_invoices as run_export

    if format not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    if status not in STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(STATUSES)}", param_hint="--status")
    settings = _settings(config)
    p = _period(period)
    path = out_path or Path(f"invoices-{p.label}.{format}")
    with connected(settings, autocommit=True, application_name="meterflow-export") as conn:
        n_inv, n_lines = run_export(conn, p, format, path, status=status, progress=RichProgress(not quiet))
    console.print(f"wrote {n_inv} invoices, {n_lines} lines to {path}")


def print_report(rep: ReconcileReport, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"reconcile {rep.period.label}"
                    f" (tolerance {rep.tolerance_minor_units} minor unit(s) per line)")
    t.add_column("check")
    t.add_column("status")
    t.add_column("detail")
    colour = {"ok": "green", "mismatch": "red", "skipped": "yellow"}
    for c in rep.checks:
        t.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail)
    console.print(t)
    if rep.mismatches:
        m = Table(title="mismatches", show_lines=False)
        for col in ("check", "customer_id", "meter", "expected", "actual", "note"):
            m.add_column(col)
        for x in rep.mismatches[:200]:
            m.add_row(x.check.split(".")[0], x.customer_id, x.meter, x.expected, x.actual, x.note)
        console.print(m)
        if len(rep.mismatches) > 200:
            console.print(f"… and {len(rep.mismatches) - 200} more (see reconciliation_runs)")
    verdict = "[green]OK[/]" if rep.ok else "[red]MISMATCH[/]"
    console.print(f"{verdict} — run {rep.run_id}")
