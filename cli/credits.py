"""``meterflow credits grant|list``: customer credits (SQL in sinks/credits_store.py).

    meterflow credits grant --customer C --amount A --currency X [--reason R] [--reference REF]
    meterflow credits list [--customer C]

The invoice run applies a customer's credits oldest first, up to each invoice's subtotal.
Exit codes: 0 ok (a repeated grant with the same reference and content is ok), 1 refused (unknown
customer, wrong currency, bad amount, a reference used for another credit; nothing written) or
Postgres unreachable / database missing, 2 bad config.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.options import ConfigOpt, connected, console, fail_text, settings_or_exit
from pricing.money import dstr, to_decimal
from pricing.periods import isoformat_utc

credits_app = typer.Typer(
    help="Customer credits: grant, list (applied by `meterflow invoice`).", no_args_is_help=True
)


@credits_app.command("grant")
def credits_grant(
    customer: Annotated[str, typer.Option("--customer", help="customer id (must exist)")],
    amount: Annotated[
        str,
        typer.Option("--amount", help="positive decimal, in the currency's minor units at most"),
    ],
    currency: Annotated[
        str, typer.Option("--currency", help="ISO 4217 code: the customer's currency")
    ],
    reason: Annotated[
        str | None, typer.Option("--reason", help="why (stored as the description)")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="idempotency key, stored as the credit id: granting the same reference "
            "again is a no-op (default: a new random id, so a re-run grants again)",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Grant a credit to a customer (one row in billing.credits)."""
    from sinks.credits_store import CreditError, grant_credit

    try:
        to_decimal(amount, "--amount")  # a bad number is reported before anything is connected
    except (TypeError, ValueError) as e:
        fail_text(str(e))
    settings = settings_or_exit(config)
    with connected(settings, application_name="meterflow-credits") as conn:
        try:
            res = grant_credit(
                conn,
                customer_id=customer,
                amount=amount,
                currency=currency.strip(),
                reason=reason,
                reference=reference,
            )
        except CreditError as e:
            fail_text(f"credit not granted: {e}")
    c = res.credit
    what = (
        "granted"
        if res.created
        else "exists already (same reference, same content; nothing written)"
    )
    console.print(
        f"credit {c.credit_id}: {dstr(c.amount)} {c.currency} to {c.customer_id} {what}",
        markup=False,
        highlight=False,
    )
    if res.alerts:
        console.print(f"{res.alerts} alert(s) raised (meterflow alerts list --customer {c.customer_id})",
                      markup=False, highlight=False)


@credits_app.command("list")
def credits_list(
    customer: Annotated[str | None, typer.Option("--customer", help="only this customer")] = None,
    config: ConfigOpt = None,
) -> None:
    """Credits with what invoices applied and what remains, oldest first per customer."""
    from sinks.credits_store import CreditError, list_credits

    settings = settings_or_exit(config)
    with connected(settings, application_name="meterflow-credits") as conn:
        try:
            rows = list_credits(conn, customer)
        except CreditError as e:
            fail_text(str(e))
    table = Table(
        "credit",
        "customer",
        "currency",
        "amount",
        "applied",
        "remaining",
        "granted at",
        "reason",
        title="credits",
    )
    for c in rows:
        table.add_row(
            c.credit_id,
            c.customer_id,
            c.currency,
            dstr(c.amount),
            dstr(c.applied),
            dstr(c.remaining),
            isoformat_utc(c.granted_at),
            c.reason or "",
        )
    console.print(table)
