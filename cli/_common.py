"""Helpers shared by the lifecycle CLIs (payments, dunning, documents) until cli/options.py lands
with the layout (issue 15): config loading and the one-line refusal of bad input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="TOML config file (default: $METERFLOW_CONFIG, "
                 "config/meterflow.toml, else the shipped example)."),
]


def settings_or_exit(config: Path | None):
    from schemas.config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None


def refuse(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr; the caller raises the returned Exit."""
    err.print(message, style="red", soft_wrap=True, markup=False, highlight=False)
    return typer.Exit(code)


def parse_day(text: str | None, option: str) -> date:
    if text is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise refuse(f"{option} {text!r} is not a date (YYYY-MM-DD)", 2) from None


@contextmanager
def app_connection(config: Path | None, name: str) -> Iterator:
    """An autocommit connection as the app role; a database error is one line, exit 1."""
    import psycopg

    from sinks.db import connect

    settings = settings_or_exit(config)
    try:
        with connect(settings, autocommit=True, application_name=name) as conn:
            yield conn
    except psycopg.OperationalError as e:
        raise refuse(f"{name}: cannot reach PostgreSQL: {str(e).strip().splitlines()[0]}") from None


def fmt_money(d, currency: str) -> str:
    """An amount at the currency's minor units: Decimal('61.700000'), 'USD' -> '61.70 USD'."""
    from jobs.batch.render import money
    from pricing.money import minor_units

    currency = currency.strip().upper()
    return f"{money(d, minor_units(currency))} {currency}"
