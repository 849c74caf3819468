"""``meterflow alerts`` (mounted by cli/app.py; docs/ALERTS.md).

    meterflow alerts rules load FILE          replace the alert rules (one transaction)
    meterflow alerts rules show               the stored rules
    meterflow alerts list [--customer C] [--limit N] [--json]
    meterflow alerts evaluate [--customer C]  evaluate now (after a top-up, a rules change)
    meterflow alerts publish [--follow]       move the outbox to the billing-alerts topic

Exit codes: 0 ok, 1 invalid file / failure (nothing written), 2 bad config or option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.options import (
    ConfigOpt,
    clear_errors,
    connected,
    console,
    err,
    fail_text,
    preflight_kafka,
    settings_or_exit,
)
from pricing.money import dstr
from pricing.periods import isoformat_utc

alerts_app = typer.Typer(help="Spend, usage and balance alerts.", no_args_is_help=True)
rules_app = typer.Typer(help="Alert rules: load from TOML/JSON, show.", no_args_is_help=True)
alerts_app.add_typer(rules_app, name="rules")

CustomerOpt = Annotated[str | None, typer.Option("--customer", help="only this customer")]


@rules_app.command("load")
def rules_load(file: Annotated[Path, typer.Argument(help="rules file (TOML or JSON)")],
               config: ConfigOpt = None) -> None:
    """Replace the stored rule set with FILE's. Invalid file: nothing is written."""
    from billing.alerts import load_rules
    from pricing.errors import PricingError
    from sinks.alerts import store_rules

    try:
        rules = load_rules(file)
    except PricingError as e:
        fail_text(str(e))
    settings = settings_or_exit(config)
    with connected(settings) as conn:
        before, after = store_rules(conn, rules)
    console.print(f"alert rules: {after} loaded (replacing {before})")


@rules_app.command("show")
def rules_show(config: ConfigOpt = None) -> None:
    """The stored rules."""
    from sinks.alerts import AlertRules

    with connected(settings_or_exit(config)) as conn:
        rules = AlertRules().refresh(conn)
    table = Table("rule", "customer", "kind", "meter/currency", "direction", "levels", title="alert rules")
    for r in rules:
        table.add_row(r.rule_id, r.customer_id or "(default)", r.kind, r.meter or r.currency or "",
                      r.direction or "", ", ".join(f"{k} {dstr(v)}" for k, v in r.levels.items()))
    console.print(table)


@alerts_app.command("list")
def alerts_list(customer: CustomerOpt = None,
                limit: Annotated[int, typer.Option(min=1, help="newest N")] = 50,
                as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
                config: ConfigOpt = None) -> None:
    """Alerts, newest first."""
    from psycopg.rows import dict_row

    from sinks.alerts import alert_json

    with connected(settings_or_exit(config)) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT alert_id, rule_id, kind, customer_id, scope, period_start, level, status, crossing,
                      direction, threshold, value, meter, currency, created_at
                 FROM billing.alerts WHERE %(c)s::text IS NULL OR customer_id = %(c)s
                ORDER BY created_at DESC, alert_id LIMIT %(n)s""", {"c": customer, "n": limit}).fetchall()
    if as_json:
        for r in rows:
            r["currency"] = r["currency"].strip() if r["currency"] else None
            print(alert_json(r).decode())
        return
    table = Table("at", "customer", "rule", "level", "status", "#", "value", "threshold", "scope",
                  title=f"alerts ({len(rows)})")
    for r in rows:
        style = {"critical": "red", "warning": "yellow"}.get(r["level"], "cyan") if r["status"] == "firing" else "green"
        unit = r["meter"] or (r["currency"] or "").strip()
        table.add_row(isoformat_utc(r["created_at"]), r["customer_id"], r["rule_id"],
                      f"[{style}]{r['level']}[/]", r["status"], str(r["crossing"]),
                      f"{dstr(r['value'])} {unit}", dstr(r["threshold"]), r["scope"])
    console.print(table)


@alerts_app.command("evaluate")
def alerts_evaluate(customer: CustomerOpt = None, config: ConfigOpt = None) -> None:
    """Evaluate the rules now for every customer (or one): e.g. after a top-up, so the balance
    alerts recover, or after loading new rules."""
    from sinks.alerts import AlertRules, evaluate_alerts

    with connected(settings_or_exit(config)) as conn:
        with conn.transaction():
            rules = AlertRules().refresh(conn)
            cs = [customer] if customer else [c for (c,) in conn.execute(
                "SELECT customer_id FROM billing.customers ORDER BY 1")]
            if customer and not conn.execute("SELECT 1 FROM billing.customers WHERE customer_id = %s",
                                             (customer,)).fetchone():
                fail_text(f"customer {customer!r} is not loaded")
            alerts = evaluate_alerts(conn, rules, cs)
    console.print(f"{len(alerts)} alert(s) raised")


@alerts_app.command("publish")
def alerts_publish(follow: Annotated[bool, typer.Option("--follow", help="keep publishing "
                                                        "(LISTEN/NOTIFY) until interrupted")] = False,
                   config: ConfigOpt = None) -> None:
    """Publish pending alerts to the alerts topic (at-least-once: consumers dedup by alert_id)."""
    from jobs.consumers.alerts_publisher import make_producer, run_publisher
    from jobs.tools.topics import ensure_topics
    from sinks.db import connect

    settings = settings_or_exit(config)
    preflight_kafka(settings)
    with clear_errors(settings):
        ensure_topics(settings)
        producer = make_producer(settings.kafka.bootstrap_servers)
        try:
            n = run_publisher(lambda: connect(settings), producer, topic=settings.topics.alerts, once=not follow)
        except KeyboardInterrupt:
            err.print("stopped")
            raise typer.Exit(130) from None
        finally:
            producer.close()
    console.print(f"{n} alert(s) published to {settings.topics.alerts}")


__all__ = ["alerts_app"]
