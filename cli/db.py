"""``meterflow db`` and ``meterflow schema``: the database schema and the event contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOpt, console, err, settings_or_exit

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
schema_app = typer.Typer(help="Contracts: JSON Schemas.", no_args_is_help=True)


@db_app.command("migrate")
def db_migrate(config: ConfigOpt = None) -> None:
    """Apply pending SQL migrations to schema billing (a no-op when up to date), connected as
    postgres.migration_user (the owner); every other command connects as postgres.user."""
    import psycopg

    from sinks.db import connect
    from sinks.meters import sync_meters
    from sinks.migrate import MigrationError, migrate

    settings = settings_or_exit(config)
    try:
        with connect(settings, migration=True) as conn:  # as the owner of schema billing
            applied = migrate(conn)
            sync_meters(conn, settings.meters)  # billing.meters follows the configuration (V009)
    except MigrationError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    except psycopg.Error as e:  # cannot connect, or the role may not migrate (V007's hint)
        diag = getattr(e, "diag", None)
        hint = f" ({diag.message_hint})" if diag is not None and diag.message_hint else ""
        if not hint and isinstance(e, psycopg.errors.InsufficientPrivilege):
            hint = (f" ({settings.postgres.migration_user} must own schema billing; a database "
                    "migrated before V007 needs one `METERFLOW__POSTGRES__MIGRATION_USER=postgres "
                    "meterflow db migrate` as the superuser)")
        err.print(f"[red]db migrate as {settings.postgres.migration_user}: "
                  f"{str(e).strip().splitlines()[0]}{hint}[/]")
        raise typer.Exit(1) from None
    if applied:
        for m in applied:
            console.print(f"applied V{m.version:03d}__{m.name}")
    else:
        console.print("schema billing is up to date")


@schema_app.command("event")
def schema_event(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of the usage event (generated from the pydantic model)."""
    from schemas.event import event_json_schema

    text = json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
