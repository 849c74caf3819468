"""A fresh, migrated PostgreSQL database per test module (the billing tables are append-only, so
tests cannot clean up after themselves by deleting rows).

Usage::

    from tests.integration.dbutil import fresh_database

    @pytest.fixture(scope="module")
    def settings():
        with fresh_database() as s:     # Settings pointing at a new database mf_test_<random>
            yield s

The stack must be up (``bash scripts/stack.sh up``); when Postgres is unreachable the fixture
skips the test with the reason, unless ``METERFLOW_REQUIRE_STACK=1`` (CI), where it fails.

Roles, as in production (docs/OPERATIONS.md, "Database roles"): the database is created and
migrated by the superuser (``METERFLOW_PG_SUPERUSER``, default ``postgres``), and the Settings
handed to the test connect as the app role ``meterflow_app``, which owns nothing. A test that
must act as a superuser (tampering on purpose) uses :func:`admin_connect`. Passwords come from
libpq's password file: the stack's ``postgres/pgpass`` unless ``PGPASSFILE`` is set.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from schemas.config import REPO_ROOT, PostgresSettings, Settings, load_settings
from sinks.db import connect
from sinks.migrate import migrate

SUPERUSER = os.environ.get("METERFLOW_PG_SUPERUSER", "postgres")


def _use_the_stacks_password_file() -> None:
    """A stack with password auth keeps its passwords in <stack>/postgres/pgpass (scripts/stack.sh)."""
    stack_dir = Path(os.environ.get("METERFLOW_STACK_DIR", str(REPO_ROOT / ".local" / "stack")))
    passfile = stack_dir / "postgres" / "pgpass"
    if "PGPASSFILE" not in os.environ and passfile.is_file():
        os.environ["PGPASSFILE"] = str(passfile)


_use_the_stacks_password_file()


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment for a ``meterflow`` subprocess that must reach exactly this database (and
    the same Postgres and Kafka as the test: CI runs the stack on free ports)."""
    pg = settings.postgres
    env = {
        "PATH": "/usr/bin:/bin",
        "METERFLOW__POSTGRES__HOST": pg.host,
        "METERFLOW__POSTGRES__PORT": str(pg.port),
        "METERFLOW__POSTGRES__DATABASE": pg.database,
        "METERFLOW__POSTGRES__USER": pg.user,
        "METERFLOW__KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
    }
    for k in ("PGPASSFILE", "PGPASSWORD", "METERFLOW__POSTGRES__PASSWORD"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def _superuser(settings: Settings, database: str) -> PostgresSettings:
    return settings.postgres.model_copy(update={"database": database, "user": SUPERUSER, "password": None})


def _admin_conninfo(settings: Settings) -> str:
    return _superuser(settings, "postgres").conninfo()


def admin_connect(settings: Settings, **kwargs) -> psycopg.Connection:
    """A superuser's connection to the test's database: only for tests that tamper on purpose."""
    return connect(_superuser(settings, settings.postgres.database), **kwargs)


@contextmanager
def fresh_database(settings: Settings | None = None, *, keep: bool = False) -> Iterator[Settings]:
    """Create ``mf_test_<random>``, apply all migrations, yield Settings for it, drop it after.

    ``keep=True`` (or ``METERFLOW_KEEP_TEST_DB=1``) leaves the database for inspection.
    """
    base = settings or load_settings()
    name = f"mf_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(_admin_conninfo(base), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        if os.environ.get("METERFLOW_REQUIRE_STACK") == "1":
            raise
        pytest.skip(f"PostgreSQL is not reachable ({e}); run `bash scripts/stack.sh up`")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    s = base.model_copy(update={"postgres": base.postgres.model_copy(update={"database": name})})
    try:
        with admin_connect(s) as conn:  # V007 hands everything to meterflow_owner
            migrate(conn)
        yield s
    finally:
        if not (keep or os.environ.get("METERFLOW_KEEP_TEST_DB") == "1"):
            with psycopg.connect(_admin_conninfo(base), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


# ---------------------------------------------------------------------------------------------
# Seeding helpers: price books, customers and tax rates through the real stores; usage facts
# written directly with SQL (the streaming jobs write the same rows in production). Prices here
# are tiny Decimal functions P(cumulative quantity).
# ---------------------------------------------------------------------------------------------
import json  # noqa: E402 - the seeding helpers' imports, kept with them
import uuid  # noqa: E402 - the seeding helpers' imports, kept with them
from collections.abc import Callable, Sequence  # noqa: E402 - the seeding helpers' imports, kept with them
from datetime import UTC, datetime, timedelta  # noqa: E402 - the seeding helpers' imports, kept with them
from decimal import Decimal  # noqa: E402 - the seeding helpers' imports, kept with them

D = Decimal
PriceFn = Callable[[Decimal], Decimal]


def flat(unit: str) -> PriceFn:
    return lambda q: q * D(unit)


def tiered(*tiers: tuple[int | None, str]) -> PriceFn:
    """Graduated: ``tiered((1000, "0.10"), (None, "0.08"))``."""

    def p(q: Decimal) -> Decimal:
        total, lower = D(0), D(0)
        for upto, price in tiers:
            top = q if upto is None else min(q, D(upto))
            if top > lower:
                total += (top - lower) * D(price)
            if upto is None or q <= upto:
                break
            lower = D(upto)
        return total

    return p


def volume(*tiers: tuple[int | None, str]) -> PriceFn:
    """All units at the price of the tier the total falls in."""

    def p(q: Decimal) -> Decimal:
        for upto, price in tiers:
            if upto is None or q <= upto:
                return q * D(price)
        raise AssertionError("no tier")

    return p


# Price books, customers and tax rates go through the real stores (sinks/pricebook_store.py), as
# `meterflow pricebook load` writes them. The charges of these tests are computed by the PriceFn
# given to add_usage, not from the book: its one price is a placeholder (the invoice run reads
# only the book's currency and the rounding mode of its version in force).
PLACEHOLDER_PRICES = [{"meter": "api_calls", "model": "flat", "unit_price": "0.10"}]


def seed_price_book(conn, price_book_id: str, currency: str, rounding_mode: str = "ROUND_HALF_UP",
                    *, version: str = "v1", effective_from: datetime | None = None) -> None:
    """A price book (or one more version of it) with ``rounding_mode``."""
    from pricing.book import price_book_from_data
    from sinks.pricebook_store import store_price_books

    eff = effective_from or datetime(2020, 1, 1, tzinfo=UTC)
    store_price_books(conn, [price_book_from_data({
        "price_book_id": price_book_id, "currency": currency,
        "versions": [{"name": version, "effective_from": eff.isoformat(), "rounding_mode": rounding_mode,
                      "prices": PLACEHOLDER_PRICES}],
    })])


def seed_customer(conn, customer_id: str, price_book_id: str, currency: str,
                  tax_region: str | None = None) -> None:
    from pricing.reference import Customer
    from sinks.pricebook_store import store_customers

    store_customers(conn, [Customer(customer_id=customer_id, name=customer_id.title(),
                                    price_book_id=price_book_id, currency=currency,
                                    tax_region=tax_region)])


def seed_tax_rate(conn, region: str, rate: str, effective_from: datetime) -> None:
    from pricing.reference import TaxRate
    from sinks.pricebook_store import store_tax_rates

    store_tax_rates(conn, [TaxRate(region=region, effective_from=effective_from, rate=D(rate))])


def seed_credit(conn, credit_id: str, customer_id: str, currency: str, amount: str,
                granted_at: datetime) -> None:
    conn.execute(
        "INSERT INTO billing.credits (credit_id, customer_id, currency, amount, granted_at) "
        "VALUES (%s, %s, %s, %s, %s)",
        (credit_id, customer_id, currency, D(amount), granted_at),
    )


def period_of(ts: datetime) -> datetime:
    return datetime(ts.year, ts.month, 1, tzinfo=UTC)


def add_usage(
    conn,
    customer_id: str,
    meter: str,
    window_start: datetime,
    quantities: Sequence[str | int],
    price: PriceFn,
    *,
    currency: str = "USD",
    price_book_id: str = "pb",
    price_version: str = "v1",
    window: timedelta = timedelta(hours=1),
    cause: str | None = None,
) -> uuid.UUID:
    """Accept events into a window, write its next revision and the charge delta it causes.

    The charge is ``P(Σ final window quantities of the period) − Σ charges already recorded``
    (DESIGN.md section 4, one price version). Returns the charge id.
    """
    period_of(window_start)  # validates window_start (aware UTC)
    we = window_start + window
    rev, prev_q, prev_n = conn.execute(
        """SELECT coalesce(max(revision), 0) + 1,
                  coalesce((array_agg(quantity ORDER BY revision DESC))[1], 0),
                  coalesce((array_agg(event_count ORDER BY revision DESC))[1], 0)
             FROM billing.aggregated_usage
            WHERE customer_id = %s AND meter = %s AND window_start = %s""",
        (customer_id, meter, window_start),
    ).fetchone()
    added = D(0)
    for i, q in enumerate(quantities):
        qd = D(str(q))
        added += qd
        conn.execute(
            """INSERT INTO billing.usage_events (event_id, customer_id, meter, event_time,
                 ingestion_time, quantity, properties, window_start, source)
               VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s)""",
            (
                f"ev-{uuid.uuid4()}",
                customer_id,
                meter,
                window_start + timedelta(seconds=7 + i),
                qd,
                json.dumps({"region": "eu-west-1"}),
                window_start,
                "stream" if rev == 1 else "late",
            ),
        )
    new_q = prev_q + added
    conn.execute(
        """INSERT INTO billing.aggregated_usage (customer_id, meter, window_start, window_end,
             revision, quantity, event_count, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (customer_id, meter, window_start, we, rev, new_q, prev_n + len(quantities),
         "window" if rev == 1 else "late_revision"),
    )
    return add_charge_to_match(conn, customer_id, meter, window_start, price, currency=currency,
                               price_book_id=price_book_id, price_version=price_version,
                               window=window, revision=rev, quantity_delta=added,
                               cause=cause or ("window_fired" if rev == 1 else "late_revision"))


def add_charge_to_match(conn, customer_id, meter, window_start, price: PriceFn, *, currency,
                        price_book_id, price_version, window, revision, quantity_delta,
                        cause) -> uuid.UUID:
    ps = period_of(window_start)
    total_q = conn.execute(
        """SELECT coalesce(sum(quantity), 0) FROM billing.v_current_usage
            WHERE customer_id = %s AND meter = %s AND period_start = %s""",
        (customer_id, meter, ps),
    ).fetchone()[0]
    charged = conn.execute(
        """SELECT coalesce(sum(amount), 0), coalesce(sum(quantity_delta), 0)
             FROM billing.rated_charges WHERE customer_id = %s AND meter = %s AND period_start = %s""",
        (customer_id, meter, ps),
    ).fetchone()
    before_q = charged[1]
    amount = price(D(total_q)) - charged[0]
    cid = uuid.uuid4()
    calc = {
        "window_start": window_start.isoformat(), "quantity_delta": str(quantity_delta),
        "cumulative_before": str(before_q), "cumulative_after": str(total_q),
        "price_book_id": price_book_id, "price_version": price_version,
        "formula": f"P({total_q}) - charged_so_far({charged[0]})", "amount": str(amount),
    }
    conn.execute(
        """INSERT INTO billing.rated_charges (charge_id, customer_id, meter, period_start,
             window_start, window_end, revision, currency, quantity_delta, amount, price_book_id,
             price_version, calculation, cause)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (cid, customer_id, meter, ps, window_start, window_start + window, revision, currency,
         quantity_delta, amount, price_book_id, price_version, json.dumps(calc), cause),
    )
    return cid


def dump_tables(conn, tables: Sequence[str] = ("invoices", "invoice_lines", "invoice_line_charges",
                                                "credit_applications", "invoice_number_counters")):
    """Every row of the given billing tables, sorted: compare two dumps to prove nothing changed."""
    out = {}
    for t in tables:
        rows = conn.execute(f"SELECT to_jsonb(t)::text FROM billing.{t} t").fetchall()
        out[t] = sorted(r[0] for r in rows)
    return out
