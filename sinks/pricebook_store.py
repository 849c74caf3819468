"""Price books, customers and tax rates in PostgreSQL (``billing`` schema, see V001__core.sql).

* Price book versions are immutable: loading the same content again is a no-op; different content
  under an existing version name (or a version name reused for another effective_from) is an error
  naming the book and version. Everything of one load call happens in ONE transaction: on any
  error nothing is written.
* Customers are upserted (price book, currency, tax region may change); their price book must
  exist and have the customer's currency.
* Tax rates are immutable per (region, effective_from): same rate again = no-op, another = error.

"Same content" is decided by the sha256 of the version's canonical JSON
(:meth:`pricing.book.PriceVersion.canonical_json`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pricing.book import PriceBook, PriceVersion
from pricing.errors import CustomerNotPricedError, PriceBookError
from pricing.periods import isoformat_utc
from pricing.reference import Customer, TaxRate


class StoreConflictError(PriceBookError):
    """The load contradicts what is stored (immutable content changed). Nothing was written."""


@dataclass(frozen=True)
class LoadResult:
    kind: str  # "price_book" | "version" | "customer" | "tax_rate"
    key: str
    status: str  # "inserted" | "unchanged" | "updated"


def _lock(conn: psycopg.Connection, key: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))


def store_price_books(conn: psycopg.Connection, books: Sequence[PriceBook]) -> list[LoadResult]:
    """Write books and their versions in one transaction; see the module docstring."""
    out: list[LoadResult] = []
    with conn.transaction():
        for book in books:
            out.extend(_store_book(conn, book))
    return out


def _store_book(conn: psycopg.Connection, book: PriceBook) -> list[LoadResult]:
    bid = book.price_book_id
    _lock(conn, f"meterflow.price_book:{bid}")
    out: list[LoadResult] = []
    row = conn.execute(
        "SELECT currency FROM billing.price_books WHERE price_book_id = %s", (bid,)
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO billing.price_books (price_book_id, currency, description) VALUES (%s, %s, %s)",
            (bid, book.currency, book.description),
        )
        out.append(LoadResult("price_book", bid, "inserted"))
    elif row[0] != book.currency:
        raise StoreConflictError(
            f"price book {bid!r} is stored with currency {row[0]}; the file says {book.currency} "
            "(a price book's currency cannot change: create a new price book)"
        )
    else:
        out.append(LoadResult("price_book", bid, "unchanged"))
    stored = {
        r[0]: (r[1], r[2])
        for r in conn.execute(
            "SELECT version, effective_from, content_sha256 FROM billing.price_book_versions "
            "WHERE price_book_id = %s",
            (bid,),
        )
    }
    by_start = {eff: name for name, (eff, _sha) in stored.items()}
    for ver in book.versions:
        sha = ver.sha256()
        key = f"{bid}/{ver.name}"
        if ver.name in stored:
            eff, stored_sha = stored[ver.name]
            if stored_sha == sha:
                out.append(LoadResult("version", key, "unchanged"))
                continue
            raise StoreConflictError(
                f"price book {bid!r} version {ver.name!r} is already loaded with different content "
                f"(stored sha256 {stored_sha[:12]}…, effective from {isoformat_utc(eff)}; file sha256 "
                f"{sha[:12]}…): versions are immutable, load the change as a new version"
            )
        other = by_start.get(ver.effective_from)
        if other is not None:
            raise StoreConflictError(
                f"price book {bid!r} version {ver.name!r}: effective_from "
                f"{isoformat_utc(ver.effective_from)} is already used by stored version {other!r}"
            )
        conn.execute(
            "INSERT INTO billing.price_book_versions "
            "(price_book_id, version, effective_from, rounding_mode, content, content_sha256) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (bid, ver.name, ver.effective_from, ver.rounding_mode, Jsonb(ver.canonical()), sha),
        )
        out.append(LoadResult("version", key, "inserted"))
    return out


def read_price_books(conn: psycopg.Connection, price_book_id: str | None = None) -> dict[str, PriceBook]:
    """Stored books (all, or one) back as the pricing model, every version's sha256 re-checked;
    a book without versions is left out."""
    heads = {r[0]: (r[1].strip(), r[2]) for r in conn.execute(
        "SELECT price_book_id, currency, description FROM billing.price_books "
        "WHERE %(id)s::text IS NULL OR price_book_id = %(id)s", {"id": price_book_id})}
    versions: dict[str, list[dict[str, Any]]] = {k: [] for k in heads}
    for book_id, name, content, sha in conn.execute(
        "SELECT price_book_id, version, content, content_sha256 FROM billing.price_book_versions "
        "WHERE %(id)s::text IS NULL OR price_book_id = %(id)s ORDER BY price_book_id, effective_from",
        {"id": price_book_id},
    ):
        ver = PriceVersion.model_validate(content)  # decimals are strings in the content
        if ver.sha256() != sha or ver.name != name:
            raise PriceBookError(f"stored price book {book_id!r} version {name!r} does not match its sha256")
        versions[book_id].append(content)
    return {
        k: PriceBook.model_validate({"price_book_id": k, "currency": cur, "description": desc,
                                     "versions": versions[k]})
        for k, (cur, desc) in heads.items() if versions[k]
    }


def read_price_book(conn: psycopg.Connection, price_book_id: str) -> PriceBook:
    """Read a stored book back as the pricing model (every version's sha256 is re-checked)."""
    books = read_price_books(conn, price_book_id)
    if price_book_id not in books:
        exists = conn.execute("SELECT 1 FROM billing.price_books WHERE price_book_id = %s",
                              (price_book_id,)).fetchone()
        raise LookupError(f"price book {price_book_id!r} "
                          + ("has no version loaded" if exists else "is not loaded"))
    return books[price_book_id]


def read_customer_price_book(conn: psycopg.Connection, customer_id: str) -> PriceBook:
    """The price book of a customer; CustomerNotPricedError if unknown."""
    row = conn.execute(
        "SELECT price_book_id FROM billing.customers WHERE customer_id = %s", (customer_id,)
    ).fetchone()
    if row is None:
        raise CustomerNotPricedError(customer_id)
    return read_price_book(conn, row[0])


def store_customers(conn: psycopg.Connection, customers: Sequence[Customer]) -> list[LoadResult]:
    """Upsert customers in one transaction. Their price book must be loaded, in their currency."""
    out: list[LoadResult] = []
    with conn.transaction():
        books = {
            r[0]: r[1].strip()
            for r in conn.execute("SELECT price_book_id, currency FROM billing.price_books")
        }
        errors = []
        for c in customers:
            if c.price_book_id not in books:
                errors.append(f"customer {c.customer_id!r}: price book {c.price_book_id!r} is not loaded")
            elif books[c.price_book_id] != c.currency:
                errors.append(
                    f"customer {c.customer_id!r}: currency {c.currency} differs from price book "
                    f"{c.price_book_id!r} currency {books[c.price_book_id]}"
                )
        if errors:
            raise StoreConflictError("customers not loaded:\n  " + "\n  ".join(errors))
        for c in customers:
            row = conn.execute(
                "SELECT price_book_id, currency, tax_region, name, payment_terms_days FROM billing.customers "
                "WHERE customer_id = %s FOR UPDATE",
                (c.customer_id,),
            ).fetchone()
            values = (c.price_book_id, c.currency, c.tax_region, c.name, c.payment_terms_days)
            if row is None:
                conn.execute(
                    "INSERT INTO billing.customers (customer_id, price_book_id, currency, tax_region, name, "
                    "payment_terms_days) VALUES (%s, %s, %s, %s, %s, %s)",
                    (c.customer_id, *values),
                )
                out.append(LoadResult("customer", c.customer_id, "inserted"))
            elif (row[0], row[1].strip(), row[2], row[3], row[4]) == values:
                out.append(LoadResult("customer", c.customer_id, "unchanged"))
            else:
                conn.execute(
                    "UPDATE billing.customers SET price_book_id = %s, currency = %s, tax_region = %s, "
                    "name = %s, payment_terms_days = %s, updated_at = now() WHERE customer_id = %s",
                    (*values, c.customer_id),
                )
                out.append(LoadResult("customer", c.customer_id, "updated"))
    return out


def store_tax_rates(conn: psycopg.Connection, rates: Sequence[TaxRate]) -> list[LoadResult]:
    """Insert tax rates in one transaction; same (region, effective_from) and rate = no-op."""
    out: list[LoadResult] = []
    with conn.transaction():
        _lock(conn, "meterflow.tax_rates")
        for t in rates:
            key = f"{t.region}@{isoformat_utc(t.effective_from)}"
            row = conn.execute(
                "SELECT rate FROM billing.tax_rates WHERE region = %s AND effective_from = %s",
                (t.region, t.effective_from),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO billing.tax_rates (region, effective_from, rate, description) "
                    "VALUES (%s, %s, %s, %s)",
                    (t.region, t.effective_from, t.rate, t.description),
                )
                out.append(LoadResult("tax_rate", key, "inserted"))
            elif row[0] == t.rate:
                out.append(LoadResult("tax_rate", key, "unchanged"))
            else:
                raise StoreConflictError(
                    f"tax rate {key} is stored as {row[0]}; the file says {t.rate} "
                    "(rates are immutable: load a new effective_from)"
                )
    return out


# --- the rating side: every customer's book, cached -----------------------------------------


class PriceBooks:
    """Customers' price books, read from Postgres and cached until a version or customer is added."""

    def __init__(self) -> None:
        self._stamp: tuple[Any, ...] | None = None
        self._books: dict[str, PriceBook] = {}
        self._customers: dict[str, str] = {}

    def refresh(self, conn: psycopg.Connection) -> None:
        stamp = conn.execute(
            """SELECT (SELECT count(*) FROM billing.price_book_versions),
                      (SELECT max(loaded_at) FROM billing.price_book_versions),
                      (SELECT count(*) FROM billing.customers),
                      (SELECT max(updated_at) FROM billing.customers)"""
        ).fetchone()
        if stamp == self._stamp:
            return
        self._books = read_price_books(conn)
        self._customers = dict(
            conn.execute("SELECT customer_id, price_book_id FROM billing.customers").fetchall()
        )
        self._stamp = stamp

    def book_for(self, customer_id: str) -> PriceBook:
        book_id = self._customers.get(customer_id)
        if book_id is None:
            raise RatingError("customer_not_priced", f"customer {customer_id!r} has no price book "
                              "(load it with `meterflow customers load`)")
        book = self._books.get(book_id)
        if book is None:
            raise RatingError("price_book_missing", f"price book {book_id!r} of customer "
                              f"{customer_id!r} has no versions")
        return book


class RatingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
