"""``meterflow pricebook|customers|taxes`` commands (mounted by cli/app.py).

    meterflow pricebook load FILE...           write price books + versions (one transaction)
    meterflow pricebook quote FILE --meter M --quantity Q [--at INSTANT] [--json]
    meterflow customers load FILE              upsert customers
    meterflow taxes load FILE                  insert tax rates

Exit codes: 0 ok, 1 invalid file or conflict with stored data (nothing written), 2 bad config.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.options import ConfigOpt, connected, console, err, settings_or_exit
from pricing.errors import PricingError
from pricing.periods import parse_instant

out = console

pricebook_app = typer.Typer(help="Price books: load into Postgres, quote.", no_args_is_help=True)
customers_app = typer.Typer(help="Customers: price book, currency, tax region.", no_args_is_help=True)
taxes_app = typer.Typer(help="Tax rates per region with effective dates.", no_args_is_help=True)

FilesArg = Annotated[list[Path], typer.Argument(help="TOML or JSON file(s)", exists=False)]


def _connect(config: Path | None):  # a psycopg connection, with clear errors
    return connected(settings_or_exit(config))


def _fail(e: Exception) -> typer.Exit:
    err.print("[red]error:[/red] ", end="")
    err.print(str(e), markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _report(results, title: str) -> None:
    table = Table("kind", "key", "status", title=title)
    for r in results:
        style = {"inserted": "green", "updated": "yellow"}.get(r.status, "dim")
        table.add_row(r.kind, r.key, f"[{style}]{r.status}[/{style}]")
    out.print(table)


@pricebook_app.command("load")
def pricebook_load(files: FilesArg, config: ConfigOpt = None) -> None:
    """Load price book files. Same version content again: no-op. Different content under a loaded
    version name: error naming it. Any error: nothing is written."""
    from pricing.book import load_price_book
    from sinks.pricebook_store import store_price_books

    _load_and_store(files, config, lambda f: [load_price_book(f)], store_price_books, "price books")


def _load_and_store(files, config, read, store, what: str) -> None:
    """Validate every file before writing anything, then store all of it in one transaction."""
    try:
        items = [x for f in files for x in read(f)]
    except PricingError as e:
        raise _fail(e) from None
    with _connect(config) as conn:
        try:
            results = store(conn, items)
        except PricingError as e:
            raise _fail(e) from None
    _report(results, what)


@pricebook_app.command("quote")
def pricebook_quote(
    file: Annotated[Path, typer.Argument(help="price book file (TOML or JSON)")],
    meter: Annotated[str, typer.Option("--meter", "-m", help="meter name")],
    quantity: Annotated[str, typer.Option("--quantity", "-q", help="units in one billing period")],
    at: Annotated[
        str | None, typer.Option("--at", help="RFC 3339 instant (default: the latest version)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (amounts as strings)")] = False,
) -> None:
    """What QUANTITY units of METER cost in one billing period, tier by tier. No database needed."""
    from pricing.book import load_price_book
    from pricing.quote import quote

    try:
        q = Decimal(quantity.strip())
    except InvalidOperation:
        raise _fail(ValueError(f"--quantity {quantity!r} is not a decimal number")) from None
    try:
        instant = parse_instant(at) if at is not None else None
        result = quote(load_price_book(file), meter, q, instant)
    except (PricingError, ValueError) as e:
        raise _fail(e) from None
    if as_json:
        print(result.render_json())
    else:
        print(result.render_text())


@customers_app.command("load")
def customers_load(files: FilesArg, config: ConfigOpt = None) -> None:
    """Upsert customers (customer → price book, currency, tax region)."""
    from pricing.reference import load_customers
    from sinks.pricebook_store import store_customers

    _load_and_store(files, config, load_customers, store_customers, "customers")


@taxes_app.command("load")
def taxes_load(files: FilesArg, config: ConfigOpt = None) -> None:
    """Insert tax rates per region and effective date (immutable: a changed rate is an error)."""
    from pricing.reference import load_tax_rates
    from sinks.pricebook_store import store_tax_rates

    _load_and_store(files, config, load_tax_rates, store_tax_rates, "tax rates")
