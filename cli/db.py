"""``meterflow db create|migrate``, ``meterflow init`` and ``meterflow schema``: the database, its
schema and the event contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOpt, clear_errors, console, fail_text, postgres_problem, preflight_kafka, settings_or_exit
from schemas.config import Settings

db_app = typer.Typer(help="The database: create it, migrate its schema.", no_args_is_help=True)
schema_app = typer.Typer(help="Contracts: JSON Schemas.", no_args_is_help=True)


SuperuserOpt = Annotated[str, typer.Option(
    "--superuser", envvar="METERFLOW_PG_SUPERUSER",
    help="Postgres superuser that creates the database and roles when the owner cannot connect "
         "(its password from PGPASSWORD or the PGPASSFILE password file).")]
PassfileOpt = Annotated[Path | None, typer.Option(
    "--passfile", envvar=["METERFLOW_PASSFILE", "PGPASSFILE"],
    help="libpq password file that receives generated passwords of roles created without "
         "METERFLOW__POSTGRES__PASSWORD / __MIGRATION_PASSWORD (default: $PGPASSFILE).")]


@db_app.command("create")
def db_create(superuser: SuperuserOpt = "postgres", passfile: PassfileOpt = None,
              config: ConfigOpt = None) -> None:
    """Create postgres.database owned by postgres.migration_user, and the least-privilege roles
    when missing (as --superuser); a no-op when the owner can already connect to it. Idempotent."""
    create_database_step(settings_or_exit(config), superuser, passfile)


def create_database_step(settings: Settings, superuser: str, passfile: Path | None) -> None:
    from sinks.db import create_database

    with clear_errors(settings):
        for line in create_database(settings, superuser=superuser, passfile=passfile):
            console.print(line, markup=False, highlight=False)


@db_app.command("migrate")
def db_migrate(config: ConfigOpt = None) -> None:
    """Apply pending SQL migrations to schema billing (a no-op when up to date), connected as
    postgres.migration_user (the owner); every other command connects as postgres.user."""
    migrate_step(settings_or_exit(config))


def migrate_step(settings: Settings) -> None:
    import psycopg

    from sinks.db import connect
    from sinks.meters import sync_meters
    from sinks.migrate import MigrationError, migrate

    try:
        with connect(settings, migration=True) as conn:  # as the owner of schema billing
            applied = migrate(conn)
            sync_meters(conn, settings.meters)  # billing.meters follows the configuration (V009)
    except MigrationError as e:
        fail_text(str(e))
    except psycopg.Error as e:  # cannot connect, or the role may not migrate (V007's hint)
        owner = settings.postgres.migration_user
        if isinstance(e, psycopg.OperationalError):  # database missing, unreachable, refused
            fail_text(f"db migrate as {owner}: {postgres_problem(e, settings)}")
        diag = getattr(e, "diag", None)
        hint = f" ({diag.message_hint})" if diag is not None and diag.message_hint else ""
        if not hint and isinstance(e, psycopg.errors.InsufficientPrivilege):
            hint = (f" ({owner} must own schema billing; a database "
                    "migrated before V007 needs one `METERFLOW__POSTGRES__MIGRATION_USER=postgres "
                    "meterflow db migrate` as the superuser)")
        fail_text(f"db migrate as {owner}: {str(e).strip().splitlines()[0]}{hint}")
    if applied:
        for m in applied:
            console.print(f"applied V{m.version:03d}__{m.name}")
    else:
        console.print("schema billing is up to date")


def init(superuser: SuperuserOpt = "postgres", passfile: PassfileOpt = None,
         config: ConfigOpt = None) -> None:
    """Everything a new installation needs, idempotent: `db create`, `db migrate`, `topics create`."""
    from cli.topics import create_topics
    from jobs.tools.topics import require_topics

    settings = settings_or_exit(config)
    preflight_kafka(settings)  # Kafka unreachable: say so before creating anything
    with clear_errors(settings):
        require_topics(settings, [])
    create_database_step(settings, superuser, passfile)
    migrate_step(settings)
    create_topics(settings)


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
