"""CLI of the re-rating job: ``meterflow run rerating`` and ``meterflow rerate``.

Mount (cli/app.py)::

    from cli.rerating import rerate, run_rerating_cmd
    run_app.command("rerating")(run_rerating_cmd)
    app.command("rerate")(rerate)
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

import typer
from rich.table import Table

from cli.options import (
    ConfigOpt,
    RichProgress,
    clear_errors,
    connected,
    console,
    err,
    preflight_database,
    preflight_kafka,
    settings_or_exit,
)
from pricing.money import dstr
from pricing.periods import isoformat_utc

_settings = settings_or_exit


def _date(text: str, opt: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).date()
    except ValueError:
        err.print(f"[red]{opt} must be a date YYYY-MM-DD, got {text!r}[/]")
        raise typer.Exit(2) from None


def run_rerating_cmd(
    bounded: Annotated[bool, typer.Option("--bounded", help="Stop at the end offsets of the late "
                                          "topic present at start.")] = False,
    max_batch: Annotated[int, typer.Option(help="Most late records per batch (one transaction).")] = 20_000,
    linger: Annotated[float, typer.Option(help="Seconds to gather a batch before applying it.")] = 1.0,
    config: ConfigOpt = None,
) -> None:
    """Fold the late topic (events beyond allowed lateness) into revisions and late_event charges."""
    from jobs.consumers.rerating import run_rerating
    from jobs.tools.topics import ensure_topics

    settings = _settings(config)
    preflight_database(settings)
    preflight_kafka(settings)
    try:
        with clear_errors(settings):
            ensure_topics(settings)
            r = run_rerating(settings, bounded=bounded, max_batch=max_batch, linger_s=linger)
    except KeyboardInterrupt:
        err.print("stopped")
        raise typer.Exit(130) from None
    table = Table("", "value", title="re-rating run (late events)")
    for label, v in (("batches", r.batches), ("late records", r.late_events), ("folded in (new)", r.folded_in),
                     ("duplicates", r.duplicates), ("invalid -> DLQ", r.invalid),
                     ("window revisions", r.revisions), ("charges", r.charges),
                     ("rating errors", r.rating_errors)):
        table.add_row(label, str(v))
    console.print(table)


def rerate(
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded on every charge (caused_by).")],
    date_from: Annotated[str, typer.Option("--from", help="First day (UTC), YYYY-MM-DD.")],
    date_to: Annotated[str, typer.Option("--to", help="Last day (UTC, inclusive), YYYY-MM-DD.")],
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    meter: Annotated[str | None, typer.Option("--meter", help="Only this meter.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be appended; write nothing.")] = False,
    include_open: Annotated[bool, typer.Option(
        "--include-open", help="Also recompute windows the metering job may still be counting "
        "(window end + allowed lateness + out-of-orderness after now). Only when it is stopped.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Re-rate a scope: recompute its windows from usage_events, rate with the price versions in
    force, and append only the differences (revisions 'rerate', one charge per period)."""
    from jobs.consumers.rerating import rerate_scope

    settings = _settings(config)
    d0, d1 = _date(date_from, "--from"), _date(date_to, "--to")
    try:
        with connected(settings, application_name="meterflow-rerate") as conn:
            res = rerate_scope(conn, settings, customer=customer, meter=meter, date_from=d0,
                               date_to=d1, reason=reason, dry_run=dry_run, progress=RichProgress(),
                               include_open=include_open)
    except ValueError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    title = "rerate (dry run: nothing written)" if dry_run else "rerate: appended"
    table = Table("customer", "meter", "period", "windows revised", "charged before", "rate now",
                  "charge", "note", title=title)
    changed = [p for p in res.periods if p.windows or p.charge_id or p.error or p.skipped_open]
    for p in changed:
        note = p.error or (f"{p.skipped_open} open window(s) not recomputed" if p.skipped_open else "")
        table.add_row(p.customer_id, p.meter, isoformat_utc(p.period_start)[:7], str(len(p.windows)),
                      dstr(p.charged), dstr(p.rate),
                      dstr(p.charge_amount) if p.charge_id else "-", note)
    console.print(table)
    if dry_run:
        for p in res.periods:
            for w in p.windows:
                console.print(f"  would append revision {w.revision} of {w.customer_id}/{w.meter}/"
                              f"{isoformat_utc(w.window_start)}: {w.old_quantity} -> {w.new_quantity}")
    console.print(f"{len(res.periods)} period(s) examined, {res.revisions} revision(s), "
                  f"{res.charges} charge(s) totalling {dstr(res.amount)}"
                  + (" would be appended" if dry_run else " appended"))
    if any(p.error for p in res.periods):
        raise typer.Exit(1)
