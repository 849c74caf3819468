"""The ``meterflow`` command line: the root typer app, mounting one sub-app per area.

| command | module |
|---|---|
| stack, cluster | cli/infra.py |
| db, schema | cli/db.py |
| produce, run metering/ledger/rerating | cli/run.py, cli/rerating.py |
| pricebook, customers, taxes | cli/pricing.py |
| invoice, reconcile, export, rerate | cli/billing.py, cli/rerating.py |
| invoice render/sent/void/write-off/status/aging/statement | cli/documents.py |
| payments, dunning | cli/payments.py, cli/dunning.py |
"""

from __future__ import annotations

import typer

from cli.billing import export_app, invoice, reconcile
from cli.db import db_app, schema_app
from cli.documents import invoice_group
from cli.dunning import dunning_app
from cli.infra import cluster_app, stack_app
from cli.payments import payments_app
from cli.pricing import customers_app, pricebook_app, taxes_app
from cli.rerating import rerate, run_rerating_cmd
from cli.run import produce, run_app

app = typer.Typer(
    name="meterflow",
    help="Usage-based metering, rating and invoicing on Apache Flink.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack_app, name="stack")
app.add_typer(cluster_app, name="cluster")
app.add_typer(db_app, name="db")
app.add_typer(schema_app, name="schema")
app.command("produce")(produce)
app.add_typer(run_app, name="run")
run_app.command("rerating")(run_rerating_cmd)
app.add_typer(pricebook_app, name="pricebook")
app.add_typer(customers_app, name="customers")
app.add_typer(taxes_app, name="taxes")
# `invoice` is a group: the invoice run without a subcommand (`invoice --period P [--issue]`),
# plus render/sent/void/write-off/status/aging/statement for issued documents (issue 17)
app.add_typer(invoice_group(invoice), name="invoice")
app.add_typer(payments_app, name="payments")
app.add_typer(dunning_app, name="dunning")
app.command("reconcile")(reconcile)
app.command("rerate")(rerate)
app.add_typer(export_app, name="export")


def main() -> None:  # console script entry point
    app()


if __name__ == "__main__":
    main()
