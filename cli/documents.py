"""``meterflow invoice …`` for issued documents (docs/INVOICING.md, "Lifecycle", "Documents"):

    meterflow invoice render NUMBER --format html|pdf [--out FILE]
    meterflow invoice render --period 2026-01 --format pdf [--out DIR]
    meterflow invoice sent NUMBER [--date D]          a `sent` fact
    meterflow invoice void NUMBER [--date D] [--note] a credit note for the open amount, linked
    meterflow invoice write-off NUMBER [--date D]     writes off what is open
    meterflow invoice status [--as-of D] [--customer C]
    meterflow invoice aging [--as-of D]               accounts receivable by days past due

``invoice_group(build)`` makes ``meterflow invoice --period P [--issue]`` (the invoice run,
``build``) and these subcommands one command group. Work is in jobs/batch/; printing only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli._common import ConfigOpt, app_connection, console, parse_day, refuse, settings_or_exit

documents_app = typer.Typer(help="Issued documents: render, sent, void, write-off, status, aging.",
                            no_args_is_help=True)

NumberArg = Annotated[str, typer.Argument(help="document number, e.g. 2026-000001")]
DateOpt = Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD (default today, UTC)")]


@documents_app.command("render")
def render(
    number: Annotated[str | None, typer.Argument(help="document number (or --period)")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="html or pdf")] = "pdf",
    period: Annotated[str | None, typer.Option("--period", help="every issued document of YYYY-MM")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="file (one document) or "
                                                "directory (--period); default <number>.<format>")] = None,
    config: ConfigOpt = None,
) -> None:
    """Render an issued invoice, correction or credit note as HTML or PDF."""
    from jobs.batch.render import DocumentNotFound, Seller, period_numbers, render_invoice
    from pricing.periods import parse_period

    if fmt not in ("html", "pdf"):
        raise refuse(f"invoice render: --format {fmt!r} must be html or pdf", 2)
    if (number is None) == (period is None):
        raise refuse("invoice render: give a document NUMBER or --period YYYY-MM (not both)", 2)
    settings = settings_or_exit(config)
    seller = Seller.from_settings(settings)
    try:
        with app_connection(config, "meterflow-render") as conn:
            if period is not None:
                try:
                    p = parse_period(period)
                except ValueError as e:
                    raise refuse(f"invoice render: {e}", 2) from None
                numbers = period_numbers(conn, p.start)
                folder = out or Path(f"invoices-{p.label}")
                folder.mkdir(parents=True, exist_ok=True)
                targets = [(n, folder / f"{n}.{fmt}") for n in numbers]
            else:
                assert number is not None  # (one of the two, checked above)
                targets = [(number, out or Path(f"{number.strip()}.{fmt}"))]
            for n, path in targets:
                path.write_bytes(render_invoice(conn, n, fmt, seller))
                console.print(f"{n} -> {path}")
    except DocumentNotFound as e:
        raise refuse(f"invoice render: {e}") from None
    except OSError as e:
        raise refuse(f"invoice render: cannot write: {e}") from None
    if period is not None and not targets:
        console.print(f"no issued documents for {period}")


@documents_app.command("statement")
def statement(
    customer: Annotated[str, typer.Option("--customer", help="customer id")],
    period: Annotated[str, typer.Option("--period", help="YYYY-MM")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="html or pdf")] = "pdf",
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    config: ConfigOpt = None,
) -> None:
    """A usage statement: daily usage per meter as a chart, for one customer and period."""
    from jobs.batch.render import Seller
    from jobs.batch.render.statement import render_statement
    from pricing.periods import parse_period

    if fmt not in ("html", "pdf"):
        raise refuse(f"invoice statement: --format {fmt!r} must be html or pdf", 2)
    try:
        p = parse_period(period)
    except ValueError as e:
        raise refuse(f"invoice statement: {e}", 2) from None
    seller = Seller.from_settings(settings_or_exit(config))
    path = out or Path(f"statement-{customer}-{p.label}.{fmt}")
    try:
        with app_connection(config, "meterflow-statement") as conn:
            path.write_bytes(render_statement(conn, customer, p, fmt, seller))
    except LookupError as e:
        raise refuse(f"invoice statement: {e}") from None
    except OSError as e:
        raise refuse(f"invoice statement: cannot write {path}: {e.strerror}") from None
    console.print(f"statement {customer} {p.label} -> {path}")


def _money(d, currency: str) -> str:
    from cli._common import fmt_money

    return fmt_money(d, currency)


def _fact(what: str, fn, number: str, day: str | None, config: Path | None, **kw):
    from jobs.batch.payments import LifecycleError

    on = parse_day(day, "--date")
    try:
        with app_connection(config, f"meterflow-{what}") as conn:
            return fn(conn, number, on, **kw)
    except LifecycleError as e:
        raise refuse(f"invoice {what}: {e}") from None


@documents_app.command("sent")
def sent(number: NumberArg, on: DateOpt = None, config: ConfigOpt = None) -> None:
    """Record that a document was sent to the customer."""
    from jobs.batch.payments import mark_sent

    status = _fact("sent", mark_sent, number, on, config)
    console.print(f"{number}: sent; status {status}")


@documents_app.command("void")
def void(number: NumberArg, on: DateOpt = None,
         note: Annotated[str | None, typer.Option("--note")] = None,
         config: ConfigOpt = None) -> None:
    """Void an invoice: issue a credit note for its open amount that gives back the credit it
    consumed, linked to it."""
    from jobs.batch.payments import void_invoice

    r = _fact("void", void_invoice, number, on, config, note=note)
    back = f"; {r.credits_restored} of credit given back" if r.credits_restored else ""
    console.print(f"{number}: void; credit note {r.credit_note_number} for {r.amount}{back}")


@documents_app.command("write-off")
def write_off(number: NumberArg, on: DateOpt = None,
              note: Annotated[str | None, typer.Option("--note")] = None,
              config: ConfigOpt = None) -> None:
    """Write off what is open on an invoice."""
    from jobs.batch.payments import write_off as wo

    amount = _fact("write-off", wo, number, on, config, note=note)
    console.print(f"{number}: {amount} written off")


@documents_app.command("status")
def status(
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today, UTC)")] = None,
    customer: Annotated[str | None, typer.Option("--customer")] = None,
    config: ConfigOpt = None,
) -> None:
    """Status and open amount of every issued document (billing.v_document_status)."""
    from jobs.batch.payments import document_states

    day = parse_day(as_of, "--as-of")
    with app_connection(config, "meterflow-status") as conn:
        rows = document_states(conn, day)
    t = Table("number", "customer", "kind", "total", "due", "status", "open", "days overdue",
              title=f"documents as of {day.isoformat()}")
    for r in rows:
        if customer and r["customer_id"] != customer:
            continue
        cur = r["currency"].strip()
        t.add_row(r["invoice_number"], r["customer_id"], r["kind"], _money(r["total"], cur),
                  r["due_date"].isoformat(), r["status"], _money(r["open_amount"], cur),
                  str(r["days_overdue"]))
    console.print(t)


@documents_app.command("aging")
def aging(
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today, UTC)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Accounts receivable aging per customer: current, 1-30, 31-60, 61-90, 90+ days past due."""
    from jobs.batch.payments import ar_aging

    day = parse_day(as_of, "--as-of")
    with app_connection(config, "meterflow-aging") as conn:
        rows = ar_aging(conn, day)
    t = Table("customer", "currency", "current", "1-30", "31-60", "61-90", "90+", "open",
              "owed to customer", title=f"receivables aging as of {day.isoformat()}")
    for r in rows:
        cur = r["currency"].strip()
        t.add_row(r["customer_id"], cur,
                  *(_money(r[k], cur) for k in ("current_amount", "days_1_30", "days_31_60",
                                                    "days_61_90", "days_over_90", "total_open",
                                                    "credit_owed")))
    console.print(t)


def invoice_group(build) -> typer.Typer:
    """``meterflow invoice``: the invoice run (``build``, when no subcommand is given: the
    existing ``invoice --period P [--customer C] [--issue] [-q]``) plus the commands above."""
    grp = typer.Typer(help="Build and issue invoices (--period), and work with issued documents.",
                      invoke_without_command=True, no_args_is_help=False)

    @grp.callback()
    def _run(
        ctx: typer.Context,
        period: Annotated[str | None, typer.Option(
            "--period", help="billing period, YYYY-MM (UTC month)")] = None,
        customer: Annotated[list[str] | None, typer.Option(
            "--customer", help="only these customers (repeatable)")] = None,
        issue: Annotated[bool, typer.Option(
            "--issue", help="issue the drafts: assign gapless numbers, set issued_at")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
        config: ConfigOpt = None,
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        if period is None:
            raise refuse("invoice: --period YYYY-MM is required (or a subcommand: render, sent, "
                         "void, write-off, status, aging)", 2)
        build(period=period, customer=customer, issue=issue, quiet=quiet, config=config)

    for cmd in documents_app.registered_commands:
        grp.registered_commands.append(cmd)
    return grp
