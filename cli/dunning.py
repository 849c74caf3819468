"""``meterflow dunning run --as-of DATE [--out DIR]``: append the dunning step due for each overdue
invoice, once per invoice and step (docs/INVOICING.md, "Dunning"). Work: jobs/batch/dunning.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli._common import ConfigOpt, app_connection, console, parse_day, refuse, settings_or_exit

dunning_app = typer.Typer(help="Overdue follow-up (policy: [[billing.dunning]] in the config).",
                          no_args_is_help=True)


@dunning_app.command("run")
def run(
    as_of: Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD (default today, UTC)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="also write each new reminder as "
                                                "<number>-<step>.html here")] = None,
    config: ConfigOpt = None,
) -> None:
    """Send (append) the reminders due on --as-of; re-running appends nothing twice."""
    from jobs.batch import dunning
    from jobs.batch.render import Seller

    day = parse_day(as_of, "--as-of")
    settings = settings_or_exit(config)
    with app_connection(config, "meterflow-dunning") as conn:
        res = dunning.run(conn, day, dunning.policy_from_settings(settings),
                          Seller.from_settings(settings))
        if out is not None and res.appended:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise refuse(f"dunning run: cannot write to {out}: {e.strerror}") from None
            for n in res.appended:
                doc = conn.execute(
                    """SELECT d.document FROM billing.dunning_notices d JOIN billing.invoices i
                        USING (invoice_id) WHERE i.invoice_number = %s AND d.step = %s""",
                    (n.invoice_number, n.step)).fetchone()[0]
                (out / f"{n.invoice_number}-{n.step}.html").write_text(doc, encoding="utf-8")
    console.print(f"dunning {day.isoformat()}: {res.overdue} overdue, {len(res.appended)} "
                  f"reminder(s) appended, {res.already} appended by another run")
    if res.appended:
        t = Table("invoice", "customer", "step", "days overdue", "open")
        for n in res.appended:
            t.add_row(n.invoice_number, n.customer_id, n.step, str(n.days_overdue),
                      f"{n.open_amount} {n.currency}")
        console.print(t)
