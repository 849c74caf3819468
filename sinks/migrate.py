"""Versioned SQL migrations for schema ``billing`` (``meterflow db migrate``).

Files ``sinks/migrations/V<NNN>__<name>.sql`` are applied in version order, each in its own
transaction, and recorded with their SHA-256 in ``billing.schema_migrations``. Re-running is a
no-op; a recorded file whose content changed is an error (write a new migration instead).
A transaction-level advisory lock makes concurrent runs safe.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_NAME_RE = re.compile(r"^V(\d{3,})__([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6D65746572  # "meter"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for p in sorted(directory.glob("*.sql")):
        m = _NAME_RE.match(p.name)
        if not m:
            raise MigrationError(f"{p.name}: migration files are named V<NNN>__<name>.sql")
        found.append(Migration(int(m.group(1)), m.group(2), p))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return sorted(found, key=lambda m: m.version)


def migrate(conn: psycopg.Connection, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply pending migrations; return the ones applied now."""
    applied_now: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS billing")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS billing.schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())"""
        )
    for mig in discover(directory):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            row = conn.execute(
                "SELECT checksum FROM billing.schema_migrations WHERE version = %s", (mig.version,)
            ).fetchone()
            if row:
                if row[0] != mig.checksum:
                    raise MigrationError(
                        f"migration V{mig.version:03d}__{mig.name} was changed after it was applied "
                        "(checksum mismatch): add a new migration instead"
                    )
                continue
            conn.execute(mig.sql)
            conn.execute(
                "INSERT INTO billing.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (mig.version, mig.name, mig.checksum),
            )
            applied_now.append(mig)
    return applied_now
