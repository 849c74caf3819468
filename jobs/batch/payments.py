"""Payments and the other facts appended to issued documents (docs/INVOICING.md, "Lifecycle").

Issued documents never change; everything after issue is a row of ``billing.invoice_events``
(and ``billing.payments`` for money received), and the status is derived
(``billing.status`` / the view ``billing.v_document_status``). Every function here runs in one
transaction and either appends all its rows or none; bad input raises :class:`LifecycleError`
with one line saying what is wrong, before anything is written.

* :func:`record_payment` — idempotent by the external reference: the same reference with the
  same values is a no-op, with other values an error. The part above the open amount becomes a
  customer credit (``billing.credits``), which later invoices consume.
* :func:`import_statement` — a bank statement CSV: each row's remittance text is searched for
  an invoice number; matched rows are recorded as payments (all or none), the others reported.
* :func:`mark_sent`, :func:`void_invoice` (issues a credit note for the open amount and links
  it), :func:`write_off`, :func:`record_refund` (money paid back against a credit note).

Payments on the same document serialize on its row lock (``SELECT … FOR UPDATE``; the row is
never updated).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import psycopg

from pricing.money import minor_units
from sinks.db import scalar

INVOICE_NUMBER_RE = re.compile(r"(?<![0-9])([0-9]{4}-[0-9]{6,})(?![0-9])")


class LifecycleError(ValueError):
    """Bad input for a lifecycle command: one line naming what is wrong; nothing was written."""


@dataclass(frozen=True)
class PaymentIn:
    invoice_number: str
    amount: Decimal
    currency: str
    paid_on: date
    method: str
    external_ref: str


@dataclass(frozen=True)
class PaymentResult:
    invoice_number: str
    external_ref: str
    amount: Decimal
    applied: Decimal
    to_credit: Decimal
    credit_id: str | None
    recorded: bool  # False: this reference was already recorded with the same values
    status: str
    open_amount: Decimal


@dataclass
class ImportResult:
    recorded: list[PaymentResult] = field(default_factory=list)
    already: list[PaymentResult] = field(default_factory=list)
    unmatched: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reference, why)


@dataclass(frozen=True)
class VoidResult:
    invoice_number: str
    credit_note_number: str | None
    amount: Decimal


def parse_amount(text: str | Decimal, what: str = "amount") -> Decimal:
    try:
        d = Decimal(str(text).strip())
    except InvalidOperation:
        raise LifecycleError(f"{what} {text!r} is not a decimal number") from None
    if not d.is_finite():
        raise LifecycleError(f"{what} {text!r} is not a finite number")
    return d


def _check_money(amount: Decimal, currency: str, what: str = "amount") -> None:
    if amount <= 0:
        raise LifecycleError(f"{what} must be positive, got {amount}")
    try:
        scale = minor_units(currency)
    except Exception:  # noqa: BLE001 - pricing raises its own error types for unknown codes
        raise LifecycleError(f"currency {currency!r} is not an ISO 4217 code") from None
    if amount != amount.quantize(Decimal(1).scaleb(-scale)):
        raise LifecycleError(f"{what} {amount} has more decimals than {currency} allows ({scale})")


def _state(conn: psycopg.Connection, invoice_id: int, as_of: date) -> tuple[str, Decimal]:
    """(status, open amount) on ``as_of`` (today: no fact may be dated in the future)."""
    row = conn.execute(
        "SELECT status, open_amount FROM billing.document_status(%s, ARRAY[%s]::bigint[])",
        (as_of, invoice_id),
    ).fetchone()
    if row is None:  # the caller locked an issued document: it has a status
        raise LookupError(f"invoice id {invoice_id} has no status")
    return row[0], row[1]


def _document(conn: psycopg.Connection, number: str) -> tuple:
    """Lock and return (invoice_id, kind, currency, customer_id, total, minor_units, tax) of the
    issued document ``number`` (its row is never updated; the lock serializes its facts)."""
    row = conn.execute(
        """SELECT invoice_id, kind, currency, customer_id, total, minor_units, tax, issued_at
             FROM billing.invoices WHERE invoice_number = %s AND status = 'issued' FOR UPDATE""",
        (number.strip(),),
    ).fetchone()
    if row is None:
        raise LifecycleError(f"no issued invoice numbered {number!r}")
    return row


def _not_future(on: date, today: date, what: str) -> None:
    if on > today:
        raise LifecycleError(f"{what} {on.isoformat()} is in the future (today is {today.isoformat()})")


def record_payment(conn: psycopg.Connection, p: PaymentIn, *, today: date | None = None,
                   source: str = "cli") -> PaymentResult:
    """Record money received for an invoice or correction (see the module docstring)."""
    today = today or datetime.now(UTC).date()
    currency = p.currency.strip().upper()
    _check_money(p.amount, currency)
    if not p.method.strip():
        raise LifecycleError("payment method must not be empty")
    ref = p.external_ref.strip()
    if not ref or len(ref) > 200:
        raise LifecycleError("external reference must be 1 to 200 characters")
    _not_future(p.paid_on, today, "payment date")
    with conn.transaction():
        # same reference recorded concurrently: the second waits here, then sees the first
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('payment:' || %s, 0))", (ref,))
        old = conn.execute(
            """SELECT i.invoice_number, p.amount, p.currency, p.paid_on, p.method, p.applied,
                      p.credit_id, p.invoice_id
                 FROM billing.payments p JOIN billing.invoices i USING (invoice_id)
                WHERE p.external_ref = %s""",
            (ref,),
        ).fetchone()
        if old is not None:
            mine = (p.invoice_number.strip(), p.amount, currency, p.paid_on, p.method.strip())
            theirs = (old[0], old[1], old[2].strip(), old[3], old[4])
            if mine != theirs:
                diff = ", ".join(f"{k} {b} (now {a})" for k, a, b in zip(
                    ("invoice", "amount", "currency", "date", "method"), mine, theirs, strict=True)
                    if a != b)
                raise LifecycleError(f"payment reference {ref!r} was already recorded with {diff}")
            status, open_amount = _state(conn, old[7], today)
            return PaymentResult(old[0], ref, old[1], old[5], old[1] - old[5], old[6], False,
                                 status, open_amount)
        inv_id, kind, inv_currency, customer, _total, _mu, _tax, _issued = _document(conn, p.invoice_number)
        if kind == "credit_note":
            raise LifecycleError(f"{p.invoice_number} is a credit note: payments go to invoices "
                                 "(money paid back is a refund)")
        if inv_currency.strip() != currency:
            raise LifecycleError(f"invoice {p.invoice_number} is in {inv_currency.strip()}, "
                                 f"the payment in {currency}")
        _status, open_amount = _state(conn, inv_id, today)
        applied = min(p.amount, max(open_amount, Decimal(0)))
        excess = p.amount - applied
        credit_id = None
        if excess > 0:
            credit_id = f"overpayment:{ref}"
            conn.execute(
                """INSERT INTO billing.credits (credit_id, customer_id, currency, amount, granted_at,
                                                description)
                   VALUES (%s, %s, %s, %s, %s, %s)""",
                (credit_id, customer, currency, excess, datetime.combine(p.paid_on, time(), UTC),
                 f"overpayment of invoice {p.invoice_number.strip()} (payment {ref})"),
            )
        pid = scalar(
            conn,
            """INSERT INTO billing.payments (external_ref, invoice_id, amount, currency, paid_on,
                                             method, applied, credit_id, source)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING payment_id""",
            (ref, inv_id, p.amount, currency, p.paid_on, p.method.strip(), applied, credit_id, source),
        )
        if applied > 0:
            conn.execute(
                """INSERT INTO billing.invoice_events (invoice_id, kind, occurred_on, amount,
                                                       payment_id, external_ref)
                   VALUES (%s, 'payment', %s, %s, %s, %s)""",
                (inv_id, p.paid_on, applied, pid, ref),
            )
        status, open_amount = _state(conn, inv_id, today)
    return PaymentResult(p.invoice_number.strip(), ref, p.amount, applied, excess, credit_id, True,
                         status, open_amount)


# Bank statement CSV: a header row naming at least these columns (any order, case-insensitive);
# `method` is optional (default bank_transfer).
STATEMENT_COLUMNS = ("date", "amount", "currency", "reference", "remittance")


def import_statement(conn: psycopg.Connection, path: str | Path, *, today: date | None = None
                     ) -> ImportResult:
    """Record the payments of a bank statement CSV whose remittance text names one issued invoice.

    The whole file is read and checked first (a malformed row refuses the file); then, in one
    transaction, every matched row is recorded — if one is refused (wrong currency, a reference
    reused with other values) nothing is. Rows that name no issued invoice (or several) are
    returned as unmatched, not recorded.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise LifecycleError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise LifecycleError(f"{path} is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    header = {(h or "").strip().lower(): h for h in (reader.fieldnames or [])}
    missing = [c for c in STATEMENT_COLUMNS if c not in header]
    if missing:
        raise LifecycleError(f"{path}: missing column(s) {', '.join(missing)} "
                             f"(need {', '.join(STATEMENT_COLUMNS)}[, method])")
    rows: list[tuple[int, PaymentIn | None, str, str]] = []
    for n, raw in enumerate(reader, start=2):
        get = lambda c, raw=raw: (raw.get(header[c]) or "").strip() if c in header else ""  # noqa: E731
        ref = get("reference")
        if not ref:
            raise LifecycleError(f"{path}:{n}: empty reference")
        try:
            on = date.fromisoformat(get("date"))
        except ValueError:
            raise LifecycleError(f"{path}:{n}: date {get('date')!r} is not YYYY-MM-DD") from None
        try:
            amount = parse_amount(get("amount"))
        except LifecycleError as e:
            raise LifecycleError(f"{path}:{n}: {e}") from None
        numbers = sorted(set(INVOICE_NUMBER_RE.findall(get("remittance"))))
        rows.append((n, PaymentIn(numbers[0] if len(numbers) == 1 else "", amount,
                                  get("currency").upper(), on, get("method") or "bank_transfer",
                                  ref) if len(numbers) == 1 else None,
                     ref, "no invoice number in the remittance text" if not numbers
                     else f"several invoice numbers ({', '.join(numbers)})" if len(numbers) > 1
                     else ""))
    res = ImportResult()
    with conn.transaction():
        for n, p, ref, why in rows:
            if p is None:
                res.unmatched.append((n, ref, why))
                continue
            known = conn.execute(
                "SELECT 1 FROM billing.invoices WHERE invoice_number = %s AND status = 'issued'",
                (p.invoice_number,),
            ).fetchone()
            if known is None:
                res.unmatched.append((n, ref, f"no issued invoice {p.invoice_number}"))
                continue
            try:
                r = record_payment(conn, p, today=today, source=f"import:{path.name}")
            except LifecycleError as e:
                raise LifecycleError(f"{path}:{n}: {e}; nothing imported") from None
            (res.recorded if r.recorded else res.already).append(r)
    return res


def mark_sent(conn: psycopg.Connection, number: str, on: date, *, today: date | None = None) -> str:
    """Append a `sent` fact (sending again appends again); returns the status."""
    today = today or datetime.now(UTC).date()
    _not_future(on, today, "sent date")
    with conn.transaction():
        inv_id = _document(conn, number)[0]
        conn.execute("INSERT INTO billing.invoice_events (invoice_id, kind, occurred_on) "
                     "VALUES (%s, 'sent', %s)", (inv_id, on))
        return _state(conn, inv_id, today)[0]


def void_invoice(conn: psycopg.Connection, number: str, on: date, *, note: str | None = None,
                 today: date | None = None) -> VoidResult:
    """Void an invoice or correction: issue a credit note for its open amount, linked to it
    (``corrects_invoice_id`` and the `void` fact's ``credit_note_id``). Never an edit.

    The credit note has no lines (it reverses an amount, not charges); its tax is the open
    amount's share of the voided document's tax, so the two documents net to what was paid.
    A document with nothing open (paid, credited, written off) or already void is refused.
    """
    today = today or datetime.now(UTC).date()
    _not_future(on, today, "void date")
    with conn.transaction():
        inv_id, kind, currency, customer, total, mu, tax, _issued = _document(conn, number)
        if kind == "credit_note":
            raise LifecycleError(f"{number} is a credit note; only invoices and corrections are voided")
        status, open_amount = _state(conn, inv_id, today)
        if status == "void":
            raise LifecycleError(f"invoice {number} is already void")
        if open_amount <= 0:
            raise LifecycleError(f"invoice {number} has nothing open (status {status}); "
                                 "nothing to void")
        q = Decimal(1).scaleb(-mu)
        tax_part = (open_amount * tax / total).quantize(q, ROUND_HALF_UP) if total else Decimal(0)
        cn_id = scalar(
            conn,
            """INSERT INTO billing.invoices
                 (customer_id, period_start, period_end, currency, minor_units, kind,
                  corrects_invoice_id, subtotal, credits_applied, tax_region, tax_rate, tax, total)
               SELECT customer_id, period_start, period_end, currency, minor_units, 'credit_note',
                      invoice_id, %(sub)s, 0, tax_region, tax_rate, %(tax)s, %(total)s
                 FROM billing.invoices WHERE invoice_id = %(id)s
               RETURNING invoice_id""",
            {"sub": -(open_amount - tax_part), "tax": -tax_part, "total": -open_amount, "id": inv_id},
        )
        cn_number = scalar(
            conn,
            "UPDATE billing.invoices SET status = 'issued' WHERE invoice_id = %s RETURNING invoice_number",
            (cn_id,),
        )
        conn.execute(
            """INSERT INTO billing.invoice_events (invoice_id, kind, occurred_on, credit_note_id, note)
               VALUES (%s, 'void', %s, %s, %s)""",
            (inv_id, on, cn_id, note),
        )
    return VoidResult(number, cn_number, open_amount)


def write_off(conn: psycopg.Connection, number: str, on: date, *, note: str | None = None,
              today: date | None = None) -> Decimal:
    """Write off what is open on an invoice (a `write_off` fact of that amount); returns it."""
    today = today or datetime.now(UTC).date()
    _not_future(on, today, "write-off date")
    with conn.transaction():
        inv_id, kind, *_ = _document(conn, number)
        if kind == "credit_note":
            raise LifecycleError(f"{number} is a credit note; only invoices are written off")
        status, open_amount = _state(conn, inv_id, today)
        if open_amount <= 0 or status == "void":
            raise LifecycleError(f"invoice {number} has nothing open (status {status})")
        conn.execute(
            """INSERT INTO billing.invoice_events (invoice_id, kind, occurred_on, amount, note)
               VALUES (%s, 'write_off', %s, %s, %s)""",
            (inv_id, on, open_amount, note),
        )
    return open_amount


def record_refund(conn: psycopg.Connection, credit_note: str, amount: Decimal, currency: str,
                  on: date, method: str, external_ref: str, *, today: date | None = None) -> str:
    """Money paid back to the customer against a credit note, up to what the credit note still
    owes (the part its invoice did not absorb). Idempotent by ``external_ref``; returns the
    credit note's status."""
    currency = currency.strip().upper()
    _check_money(amount, currency)
    today = today or datetime.now(UTC).date()
    _not_future(on, today, "refund date")
    ref = external_ref.strip()
    if not ref:
        raise LifecycleError("external reference must not be empty")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('refund:' || %s, 0))", (ref,))
        old = conn.execute(
            """SELECT i.invoice_number, e.amount, e.occurred_on, e.invoice_id
                 FROM billing.invoice_events e JOIN billing.invoices i USING (invoice_id)
                WHERE e.kind = 'refund' AND e.external_ref = %s""", (ref,)).fetchone()
        if old is not None:
            if (old[0], old[1], old[2]) != (credit_note.strip(), amount, on):
                raise LifecycleError(f"refund reference {ref!r} was already recorded for {old[0]}, "
                                     f"{old[1]} on {old[2].isoformat()}")
            return _state(conn, old[3], today)[0]
        inv_id, kind, inv_currency, *_ = _document(conn, credit_note)
        if kind != "credit_note":
            raise LifecycleError(f"{credit_note} is not a credit note: refunds are paid against "
                                 "credit notes")
        if inv_currency.strip() != currency:
            raise LifecycleError(f"credit note {credit_note} is in {inv_currency.strip()}, "
                                 f"the refund in {currency}")
        _status, open_amount = _state(conn, inv_id, today)
        if amount > -open_amount:
            raise LifecycleError(f"credit note {credit_note} owes {-open_amount} {currency}; "
                                 f"a refund of {amount} is more")
        conn.execute(
            """INSERT INTO billing.invoice_events (invoice_id, kind, occurred_on, amount,
                                                   external_ref, note)
               VALUES (%s, 'refund', %s, %s, %s, %s)""",
            (inv_id, on, amount, ref, method.strip() or None),
        )
        return _state(conn, inv_id, today)[0]


def document_states(conn: psycopg.Connection, as_of: date, numbers: Sequence[str] | None = None
                    ) -> list[dict]:
    """Rows of ``billing.document_status(as_of)`` (all issued documents, or these numbers)."""
    cur = conn.execute(
        """SELECT * FROM billing.document_status(%s)
            WHERE %s::text[] IS NULL OR invoice_number = ANY (%s::text[])
            ORDER BY invoice_number""",
        (as_of, list(numbers) if numbers else None, list(numbers) if numbers else None),
    )
    cols = [c.name for c in cur.description or ()]
    return [dict(zip(cols, r, strict=True)) for r in cur]


def ar_aging(conn: psycopg.Connection, as_of: date) -> list[dict]:
    cur = conn.execute("SELECT * FROM billing.ar_aging(%s) ORDER BY customer_id, currency", (as_of,))
    cols = [c.name for c in cur.description or ()]
    return [dict(zip(cols, r, strict=True)) for r in cur]
