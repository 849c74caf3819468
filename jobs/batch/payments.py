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
* :func:`mark_sent`, :func:`void_invoice` (issues a credit note for the open amount that also
  gives back the credit the document consumed, and links it), :func:`write_off`,
  :func:`record_refund` (money paid back against a credit note).

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

from jobs.batch.invoicing import build_lock_key
from pricing.money import minor_units
from sinks.alerts import AlertRules, evaluate_alerts
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
    amount: Decimal  # the open amount cancelled
    credits_restored: Decimal = Decimal(0)  # customer credit given back


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
            # a credit is a top-up: its balance alerts recover now (docs/ALERTS.md)
            evaluate_alerts(conn, AlertRules().refresh(conn), [customer])
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


def void_amounts(open_amount: Decimal, restored: Decimal, total: Decimal, tax: Decimal,
                 tax_charged: Decimal, scale: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """(subtotal, credits_applied, tax, total) of the credit note that voids a document.

    ``open_amount`` O: what the customer still owes on the voided document (total − payments −
    credit notes absorbed − write-offs); ``restored`` R: the credit it consumed that goes back;
    ``total``/``tax``: the voided document's; ``tax_charged``: Σ tax of the period's issued
    documents (net of earlier credit notes). With ``t`` the tax refunded::

        t               = min(round_half_up(O × tax / total), tax, max(tax_charged, 0), O)  (0 if total = 0)
        credits_applied = −R
        tax             = −t
        total           = −O                       (the receivable it cancels, nothing more)
        subtotal        = −(O − t) − R             (so total = subtotal − credits_applied + tax)

    The voided document charged tax only on what credit did not pay (its total), so the open
    part carries its share of the tax and the restored credit none; ``t ≤ O`` keeps
    ``subtotal ≤ −R`` (the credits_applied range check). A fully credit-funded document
    (total 0) gets subtotal −R, credits_applied −R, tax 0, total 0.
    """
    q = Decimal(1).scaleb(-scale)
    t = Decimal(0)
    if total > 0:
        t = min((open_amount * tax / total).quantize(q, ROUND_HALF_UP), tax, max(tax_charged, Decimal(0)),
                open_amount)
        t = max(t, Decimal(0))
    return -(open_amount - t) - restored, -restored, -t, -open_amount


def _credit_to_restore(conn: psycopg.Connection, inv_id: int, customer: str, period_start: datetime,
                       currency: str) -> list[tuple[str, Decimal]]:
    """Per credit the voided document consumed: what goes back, last consumed first.

    Each credit gets back what this document took from it, but never more than the period's
    documents (customer, currency) still hold of it: issued documents net of the credit already
    given back by later credit notes or voids, and the give-backs that drafts hold (a draft
    credit note, issued later, gives its part back itself; a rebuilt draft recomputes from the
    issued documents, which then include this void). So Σ applications per credit stays ≥ 0.
    """
    rows = conn.execute(
        """SELECT a.credit_id,
                  coalesce(sum(a.amount) FILTER (WHERE a.invoice_id = %(id)s), 0) AS mine,
                  coalesce(sum(a.amount) FILTER (WHERE i.status = 'issued' OR a.amount < 0), 0) AS held
             FROM billing.credit_applications a
             JOIN billing.invoices i ON i.invoice_id = a.invoice_id
             JOIN billing.credits cr ON cr.credit_id = a.credit_id
            WHERE i.customer_id = %(cust)s AND i.period_start = %(ps)s AND i.currency = %(cur)s
              AND a.credit_id IN (SELECT credit_id FROM billing.credit_applications
                                   WHERE invoice_id = %(id)s)
            GROUP BY a.credit_id, cr.granted_at
            ORDER BY cr.granted_at DESC, a.credit_id DESC""",
        {"id": inv_id, "cust": customer, "ps": period_start, "cur": currency},
    ).fetchall()
    out = []
    for credit_id, mine, held in rows:
        back = min(mine, held)
        if back > 0:
            out.append((credit_id, back))
    return out


def void_invoice(conn: psycopg.Connection, number: str, on: date, *, note: str | None = None,
                 today: date | None = None) -> VoidResult:
    """Void an invoice or correction: issue a credit note that cancels its open amount and gives
    back the customer credit it consumed, linked to it (``corrects_invoice_id`` and the `void`
    fact's ``credit_note_id``). Never an edit.

    The credit note has no lines (it reverses an amount, not charges). The credit comes back as
    negative ``credit_applications`` rows (per credit, see :func:`_credit_to_restore`), like an
    invoice run's credit note (docs/INVOICING.md "Credit notes"), so ``v_credit_balances`` and a
    later run of the period (``credits_net``) see it; the amounts are :func:`void_amounts`.
    Refused: a credit note, a document already void, and one with nothing open (paid, credited,
    written off) unless credit alone paid it: a fully credit-funded document (total 0) is voided
    with a credit note of total 0 that restores its credit.

    The period's invoice build is serialized with it (the build's advisory lock): a build never
    computes a period's credit give-backs from a snapshot without this void.
    """
    today = today or datetime.now(UTC).date()
    _not_future(on, today, "void date")
    with conn.transaction():
        # the build lock first, the document's row lock second (a build inserting a credit note
        # that references the document waits on its row lock while holding the build lock)
        ps = conn.execute("SELECT period_start FROM billing.invoices WHERE invoice_number = %s "
                          "AND status = 'issued'", (number.strip(),)).fetchone()
        if ps is None:
            raise LifecycleError(f"no issued invoice numbered {number!r}")
        period_start = ps[0]
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", build_lock_key(period_start))
        inv_id, kind, currency, customer, total, mu, tax, _issued = _document(conn, number)
        if kind == "credit_note":
            raise LifecycleError(f"{number} is a credit note; only invoices and corrections are voided")
        status, open_amount = _state(conn, inv_id, today)
        if status == "void":
            raise LifecycleError(f"invoice {number} is already void")
        back = _credit_to_restore(conn, inv_id, customer, period_start, currency)
        restored = sum((b for _, b in back), Decimal(0))
        if open_amount <= 0 and (restored == 0 or total != 0):
            # a paid document is not voided (a refund goes against a credit note, like one
            # without credit); one paid by credit alone (total 0) is: its credit comes back
            raise LifecycleError(f"invoice {number} has nothing open (status {status}) and was not "
                                 "paid by credit alone; nothing to void")
        tax_charged = scalar(
            conn,
            """SELECT coalesce(sum(tax), 0) FROM billing.invoices
                WHERE customer_id = %s AND period_start = %s AND currency = %s AND status = 'issued'""",
            (customer, period_start, currency),
        )
        sub, credits, cn_tax, cn_total = void_amounts(max(open_amount, Decimal(0)), restored, total,
                                                      tax, tax_charged, mu)
        cn_id = scalar(
            conn,
            """INSERT INTO billing.invoices
                 (customer_id, period_start, period_end, currency, minor_units, kind,
                  corrects_invoice_id, subtotal, credits_applied, tax_region, tax_rate, tax, total)
               SELECT customer_id, period_start, period_end, currency, minor_units, 'credit_note',
                      invoice_id, %(sub)s, %(credits)s, tax_region, tax_rate, %(tax)s, %(total)s
                 FROM billing.invoices WHERE invoice_id = %(id)s
               RETURNING invoice_id""",
            {"sub": sub, "credits": credits, "tax": cn_tax, "total": cn_total, "id": inv_id},
        )
        if back:  # (before issue: an issued document's applications cannot be added to)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO billing.credit_applications (credit_id, invoice_id, amount) "
                    "VALUES (%s, %s, %s)", [(c, cn_id, -b) for c, b in back])
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
    return VoidResult(number, cn_number, max(open_amount, Decimal(0)), restored)


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
