"""``meterflow balances show`` (mounted by cli/app.py; docs/ALERTS.md): prepaid balances.

The ongoing balance of a customer in a currency = Σ remaining credits − the provisional spend of
its periods that have no standard invoice yet (seconds behind the stream)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.options import ConfigOpt, connected, console, fail_text, settings_or_exit
from pricing.money import dstr

balances_app = typer.Typer(help="Prepaid balances: credits minus unbilled provisional spend.",
                           no_args_is_help=True)


@balances_app.command("show")
def balances_show(customer: Annotated[str | None, typer.Option("--customer", help="only this customer")] = None,
                  config: ConfigOpt = None) -> None:
    """Every customer's ongoing balance per currency (or one customer's)."""
    from sinks.alerts import balances

    with connected(settings_or_exit(config)) as conn:
        rows = balances(conn, [customer] if customer else None)
    if customer and not rows:
        fail_text(f"customer {customer!r} is not loaded")
    table = Table("customer", "currency", "granted", "remaining credits", "unbilled spend", "balance",
                  "credit limit", "minimum", title="prepaid balances")
    for b in rows:
        style = "red" if b.balance < (b.minimum_balance if b.minimum_balance is not None else 0) else "green"
        table.add_row(b.customer_id, b.currency, dstr(b.granted), dstr(b.remaining), dstr(b.unbilled),
                      f"[{style}]{dstr(b.balance)}[/]",
                      "" if b.credit_limit is None else dstr(b.credit_limit),
                      "" if b.minimum_balance is None else dstr(b.minimum_balance))
    console.print(table)
