"""Small helpers of the lifecycle CLIs (payments, dunning, documents), on top of cli/options.py:
the one-line refusal of bad input, dates, a connection with clear errors, money at the
currency's minor units."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import typer

from cli.options import ConfigOpt, connected, console, err, settings_or_exit

__all__ = ["ConfigOpt", "app_connection", "console", "fmt_money", "parse_day", "refuse",
           "settings_or_exit"]


def refuse(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as one red line on stderr (no markup: it may hold ``[``); the caller
    raises the returned Exit."""
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
    """An autocommit connection as the app role; Postgres trouble is one line, exit 1 (our own
    refusals, LifecycleError and DocumentNotFound, pass through: the caller prints them)."""
    with connected(settings_or_exit(config), autocommit=True, application_name=name) as conn:
        yield conn


def fmt_money(d, currency: str) -> str:
    """An amount at the currency's minor units: Decimal('61.700000'), 'USD' -> '61.70 USD'."""
    from jobs.batch.render import money
    from pricing.money import minor_units

    currency = currency.strip().upper()
    return f"{money(d, minor_units(currency))} {currency}"
