"""PostgreSQL connections (psycopg 3) from the typed settings."""

from __future__ import annotations

import psycopg

from schemas.config import PostgresSettings, Settings, load_settings


def connect(
    settings: Settings | PostgresSettings | None = None, *, autocommit: bool = False, **kwargs
) -> psycopg.Connection:
    """Open a connection to the billing database; ``search_path`` is the billing schema."""
    pg = _pg(settings)
    conn = psycopg.connect(
        pg.conninfo(),
        autocommit=autocommit,
        options=f"-c search_path={pg.schema_name},public -c TimeZone=UTC",
        application_name=kwargs.pop("application_name", "meterflow"),
        **kwargs,
    )
    return conn


def _pg(settings: Settings | PostgresSettings | None) -> PostgresSettings:
    if settings is None:
        return load_settings().postgres
    if isinstance(settings, Settings):
        return settings.postgres
    return settings
