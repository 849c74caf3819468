"""PostgreSQL connections (psycopg 3) from the typed settings."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params, QueryNoTemplate

from schemas.config import PostgresSettings, Settings, load_settings


def connect(
    settings: Settings | PostgresSettings | None = None, *, autocommit: bool = False,
    migration: bool = False, jit: bool = True, **kwargs
) -> psycopg.Connection:
    """Open a connection to the billing database; ``search_path`` is the billing schema.

    As ``postgres.user`` (the app role), or with ``migration`` as ``postgres.migration_user``
    (the owner of schema billing: ``meterflow db migrate`` only).

    ``jit=False`` turns Postgres's JIT compilation off for the session: the streaming writers'
    per-batch statements over arrays of thousands of keys are estimated above
    ``jit_above_cost`` and compiled (with inlining and optimisation) at every batch, which
    cost more than the statements themselves: ~200 CPU µs per event end to end at 1M events
    (docs/PERFORMANCE.md, session 7). Analysts' and batch queries keep the server's setting."""
    pg = _pg(settings)
    conn = psycopg.connect(
        pg.conninfo(migration=migration),
        autocommit=autocommit,
        options=f"-c search_path={pg.schema_name},public -c TimeZone=UTC" + ("" if jit else " -c jit=off"),
        application_name=kwargs.pop("application_name", "meterflow"),
        **kwargs,
    )
    return conn


def scalar(conn: psycopg.Connection, query: QueryNoTemplate, params: Params | None = None) -> Any:
    """The first column of the one row ``query`` returns (an aggregate, ``RETURNING``, a function
    call): no row at all is a bug, not a value."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise LookupError("expected a row from: " + " ".join(str(query).split())[:80])
    return row[0]


def _pg(settings: Settings | PostgresSettings | None) -> PostgresSettings:
    if settings is None:
        return load_settings().postgres
    if isinstance(settings, Settings):
        return settings.postgres
    return settings


# --- roles (docs/OPERATIONS.md, "Database roles"; sinks/migrations/V007__least_privilege.sql) ---

OWNER_ROLE, APP_ROLE, ANALYST_ROLE = "meterflow_owner", "meterflow_app", "meterflow_analyst"


def bootstrap_roles(conn: psycopg.Connection, database: str, passwords: dict[str, str | None],
                    passfile: Path | None = None) -> list[str]:
    """As a superuser (autocommit connection): create the login roles meterflow_owner and
    meterflow_app and the group role meterflow_analyst when missing (never superusers, never
    able to create roles or databases), and database ``database`` owned by meterflow_owner.

    A login role that has no password gets ``passwords[role]`` (from the environment), else,
    with ``passfile`` (the local stack's libpq password file, mode 0600), a random one appended
    there. An existing password is never changed. Returns what was done, one line each."""
    done: list[str] = []
    for role in (OWNER_ROLE, APP_ROLE, ANALYST_ROLE):
        login = role != ANALYST_ROLE
        row = conn.execute("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
        if row is None:
            try:
                conn.execute(sql.SQL("CREATE ROLE {} {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                     "NOBYPASSRLS").format(sql.Identifier(role),
                                                           sql.SQL("LOGIN" if login else "NOLOGIN")))
                done.append(f"created role {role}")
            except psycopg.errors.DuplicateObject:
                pass  # created concurrently
        elif login:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        if not login or (row is not None and row[0]):
            continue
        pw, generated = passwords.get(role), False
        if not pw and passfile is not None:
            pw, generated = secrets.token_urlsafe(24), True
        if pw:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(pw)))
            if generated and passfile is not None:
                _append_passfile(passfile, role, pw)
            done.append(f"set the password of {role}" + (f" (in {passfile})" if generated else ""))
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
            sql.Identifier(database), sql.Identifier(OWNER_ROLE)))
        done.append(f"created database {database} owned by {OWNER_ROLE}")
    else:  # a database created before the roles: the owner role may still create schema billing
        conn.execute(sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
            sql.Identifier(database), sql.Identifier(OWNER_ROLE)))
    return done


def _append_passfile(passfile: Path, role: str, password: str) -> None:
    """One ``host:port:database:user:password`` line (any host, port, database) in a libpq
    password file that only its owner can read."""
    passfile.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"*:*:*:{role}:{password}\n")
    os.chmod(passfile, 0o600)


def bootstrap_main() -> int:
    """``python -c 'from sinks.db import bootstrap_main; bootstrap_main()'`` (scripts/stack.sh,
    docker/): the superuser's connection from libpq's environment (PGHOST, PGPORT, PGUSER,
    PGPASSWORD or PGPASSFILE); the roles' passwords from METERFLOW__POSTGRES__PASSWORD (the app)
    and METERFLOW__POSTGRES__MIGRATION_PASSWORD (the owner); METERFLOW_PASSFILE: where to keep
    generated ones; METERFLOW_DATABASE (default billing)."""
    passfile = os.environ.get("METERFLOW_PASSFILE")
    with psycopg.connect(dbname=os.environ.get("PGDATABASE", "postgres"), autocommit=True,
                         application_name="meterflow-bootstrap") as conn:
        for line in bootstrap_roles(
                conn, os.environ.get("METERFLOW_DATABASE", "billing"),
                {APP_ROLE: os.environ.get("METERFLOW__POSTGRES__PASSWORD"),
                 OWNER_ROLE: os.environ.get("METERFLOW__POSTGRES__MIGRATION_PASSWORD")},
                Path(passfile) if passfile else None):
            print(f"postgres: {line}", file=sys.stderr)
    return 0


def create_database(settings: Settings, *, superuser: str, passfile: Path | None = None,
                    connect_timeout: int = 10) -> list[str]:
    """``meterflow db create``: make ``postgres.database`` exist, owned by the owner role.

    When the owner (``postgres.migration_user``) can already connect to it, nothing is done and no
    superuser is needed (a managed database created by its DBA). Otherwise ``superuser`` (its
    password from libpq: PGPASSWORD or the PGPASSFILE password file, never from a file of ours)
    runs :func:`bootstrap_roles`: the least-privilege roles when missing (passwords from
    METERFLOW__POSTGRES__PASSWORD / __MIGRATION_PASSWORD, else generated into ``passfile``) and
    the database. With role names other than meterflow_owner / meterflow_app in the settings, the
    roles must exist already; only the database is created, owned by ``migration_user``.
    Returns what was done, one line each. Connection and permission failures propagate
    (psycopg errors: the CLI turns them into one line)."""
    pg = settings.postgres
    try:
        with psycopg.connect(pg.conninfo(migration=True), connect_timeout=connect_timeout,
                             application_name="meterflow-db-create"):
            return [f"database {pg.database} exists; {pg.migration_user} can connect to it"]
    except psycopg.OperationalError as e:
        text = str(e)
        if not ("does not exist" in text or "authentication failed" in text or "no password" in text):
            raise  # unreachable: the superuser would not get through either
    admin = pg.model_copy(update={"database": "postgres", "user": superuser, "password": None})
    with psycopg.connect(admin.conninfo(), autocommit=True, connect_timeout=connect_timeout,
                         application_name="meterflow-db-create") as conn:
        if (pg.migration_user, pg.user) == (OWNER_ROLE, APP_ROLE):
            secret = {APP_ROLE: pg.password, OWNER_ROLE: pg.migration_password}
            done = bootstrap_roles(conn, pg.database,
                                   {r: s.get_secret_value() if s else None for r, s in secret.items()},
                                   passfile)
            return done or [f"database {pg.database} and the roles exist (nothing to do)"]
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (pg.database,)).fetchone():
            return [f"database {pg.database} exists"]
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
            sql.Identifier(pg.database), sql.Identifier(pg.migration_user)))
        return [f"created database {pg.database} owned by {pg.migration_user}"]
