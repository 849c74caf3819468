"""``meterflow payments``: record money received, import a bank statement, refunds
(docs/INVOICING.md, "Payments"). The work is in jobs/batch/payments.py; this module only parses,
prints and sets the exit code (bad input: one line on stderr, exit 1, nothing written)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli._common import ConfigOpt, app_connection, console, fmt_money, parse_day, refuse

payments_app = typer.Typer(help="Payments received and refunds paid.", no_args_is_help=True)


@payments_app.command("record")
def record(
    invoice: Annotated[str, typer.Option("--invoice", help="invoice number, e.g. 2026-000001")],
    amount: Annotated[str, typer.Option("--amount", help="amount received, e.g. 120.50")],
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 code, must be the invoice's")],
    reference: Annotated[str, typer.Option("--reference", help="external reference (bank/PSP id): "
                                           "recording it again is a no-op")],
    on: Annotated[str | None, typer.Option("--date", help="date received, YYYY-MM-DD (default today, UTC)")] = None,
    method: Annotated[str, typer.Option("--method", help="bank_transfer, card, ...")] = "bank_transfer",
    config: ConfigOpt = None,
) -> None:
    """Record a payment for an invoice; an overpayment becomes a customer credit."""
    from jobs.batch.payments import LifecycleError, PaymentIn, parse_amount, record_payment

    day = parse_day(on, "--date")
    try:
        p = PaymentIn(invoice, parse_amount(amount), currency, day, method, reference)
        with app_connection(config, "meterflow-payments") as conn:
            r = record_payment(conn, p)
    except LifecycleError as e:
        raise refuse(f"payments record: {e}") from None
    if not r.recorded:
        console.print(f"payment {r.external_ref} was already recorded: invoice {r.invoice_number} "
                      f"is {r.status}, open {fmt_money(r.open_amount, currency)}")
        return
    extra = f"; {fmt_money(r.to_credit, currency)} to credit {r.credit_id}" if r.to_credit else ""
    console.print(f"payment {r.external_ref}: {fmt_money(r.applied, currency)} applied to "
                  f"{r.invoice_number}{extra}; invoice is {r.status}, open "
                  f"{fmt_money(r.open_amount, currency)}")


@payments_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="bank statement CSV: date, amount, currency, "
                                         "reference, remittance[, method]")],
    config: ConfigOpt = None,
) -> None:
    """Record the statement's payments whose remittance text names an invoice; list the others."""
    from jobs.batch.payments import LifecycleError, import_statement

    try:
        with app_connection(config, "meterflow-payments") as conn:
            res = import_statement(conn, file)
    except LifecycleError as e:
        raise refuse(f"payments import: {e}") from None
    console.print(f"{file}: {len(res.recorded)} recorded, {len(res.already)} already recorded, "
                  f"{len(res.unmatched)} unmatched")
    if res.unmatched:
        t = Table("line", "reference", "why not matched", title="unmatched")
        for n, ref, why in res.unmatched:
            t.add_row(str(n), ref, why)
        console.print(t)


@payments_app.command("refund")
def refund(
    credit_note: Annotated[str, typer.Option("--credit-note", help="credit note number")],
    amount: Annotated[str, typer.Option("--amount")],
    currency: Annotated[str, typer.Option("--currency")],
    reference: Annotated[str, typer.Option("--reference", help="external reference of the transfer")],
    on: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD (default today, UTC)")] = None,
    method: Annotated[str, typer.Option("--method")] = "bank_transfer",
    config: ConfigOpt = None,
) -> None:
    """Record money paid back to a customer against a credit note."""
    from jobs.batch.payments import LifecycleError, parse_amount, record_refund

    day = parse_day(on, "--date")
    try:
        with app_connection(config, "meterflow-payments") as conn:
            status = record_refund(conn, credit_note, parse_amount(amount), currency, day, method,
                                   reference)
    except LifecycleError as e:
        raise refuse(f"payments refund: {e}") from None
    console.print(f"refund {reference} recorded: credit note {credit_note} is {status}")
