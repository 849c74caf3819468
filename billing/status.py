"""The status and open amount of an issued document, derived from the facts appended after issue.

Issued documents never change (DESIGN.md invariant 4); what happens to them afterwards —
sent, paid (fully or partly), refunded, voided, written off — is a list of dated facts, and the
current state is this pure function of the document, its facts and a date. The database view
``billing.v_document_status`` (migration V010, function ``billing.document_status(as_of)``)
implements the same rules in SQL for analysts; an integration test compares the two.

Rules (docs/INVOICING.md, "Lifecycle"):

* invoices and corrections: ``open = total − payments − credit notes absorbed − write-offs``,
  never below 0 (an overpayment becomes a customer credit, it is not left on the invoice);
* a credit note is *absorbed* by the open balance (total − payments − write-offs) of the invoice
  it corrects, credit notes in issue order (:func:`absorb_credit_notes`); the rest is owed to
  the customer, shown as a negative open amount until refunded;
* status, first match wins: ``void`` (a void fact) > ``written_off`` (open 0 after a write-off)
  > ``paid`` (open 0) > ``overdue`` (open > 0 after the due date) > ``partially_paid``
  (something paid, refunded or credited) > ``sent`` > ``issued``.

Only facts dated on or before ``as_of`` count, so the state on any past date can be asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum

ZERO = Decimal(0)


class Status(StrEnum):
    ISSUED = "issued"
    SENT = "sent"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    OVERDUE = "overdue"
    VOID = "void"
    WRITTEN_OFF = "written_off"


class FactKind(StrEnum):
    SENT = "sent"
    PAYMENT = "payment"
    REFUND = "refund"
    VOID = "void"
    WRITE_OFF = "write_off"


@dataclass(frozen=True)
class Fact:
    """One appended fact (a row of ``billing.invoice_events``); ``amount`` for money facts."""

    kind: FactKind
    on: date
    amount: Decimal | None = None


@dataclass(frozen=True)
class Document:
    """An issued document as far as its state is concerned.

    ``credited``: for an invoice, Σ of its credit notes' absorbed parts; for a credit note, its
    own absorbed part (both from :func:`absorb_credit_notes`).
    """

    kind: str  # standard | correction | credit_note
    total: Decimal
    due_date: date
    facts: tuple[Fact, ...] = ()
    credited: Decimal = ZERO


@dataclass(frozen=True)
class DocumentState:
    status: Status
    open_amount: Decimal  # > 0 owed by the customer, < 0 owed to the customer
    paid: Decimal = ZERO
    credited: Decimal = ZERO
    written_off: Decimal = ZERO
    refunded: Decimal = ZERO
    days_overdue: int = 0
    facts: tuple[Fact, ...] = field(default=(), repr=False)


def _sum(facts: Iterable[Fact], kind: FactKind) -> Decimal:
    return sum((f.amount or ZERO for f in facts if f.kind == kind), ZERO)


def _until(facts: Iterable[Fact], as_of: date) -> tuple[Fact, ...]:
    return tuple(f for f in facts if f.on <= as_of)


def balance_before_credit_notes(total: Decimal, facts: Iterable[Fact], as_of: date) -> Decimal:
    """What a credit note can absorb of an invoice: total − payments − write-offs, at least 0."""
    fs = _until(facts, as_of)
    return max(total - _sum(fs, FactKind.PAYMENT) - _sum(fs, FactKind.WRITE_OFF), ZERO)


def absorb_credit_notes(balance: Decimal, credits: Sequence[Decimal]) -> list[Decimal]:
    """How much of each credit note (positive amounts, in issue order) the invoice's ``balance``
    absorbs: each takes what the earlier ones left, up to its own amount."""
    out = []
    left = max(balance, ZERO)
    for c in credits:
        take = min(c, left)
        out.append(take)
        left -= take
    return out


def document_state(doc: Document, as_of: date) -> DocumentState:
    """The status and open amount of ``doc`` on ``as_of`` (see the module docstring)."""
    fs = _until(doc.facts, as_of)
    paid = _sum(fs, FactKind.PAYMENT)
    written_off = _sum(fs, FactKind.WRITE_OFF)
    refunded = _sum(fs, FactKind.REFUND)
    voided = any(f.kind == FactKind.VOID for f in fs)
    sent = any(f.kind == FactKind.SENT for f in fs)
    if doc.kind == "credit_note":
        open_amount = -max(-doc.total - doc.credited - refunded, ZERO)
    else:
        open_amount = max(doc.total - paid - doc.credited - written_off, ZERO)
    days_overdue = max((as_of - doc.due_date).days, 0) if open_amount > 0 else 0
    if voided:
        status = Status.VOID
    elif open_amount == 0 and written_off > 0:
        status = Status.WRITTEN_OFF
    elif open_amount == 0:
        status = Status.PAID
    elif open_amount > 0 and as_of > doc.due_date:
        status = Status.OVERDUE
    elif paid > 0 or refunded > 0 or doc.credited > 0:
        status = Status.PARTIALLY_PAID
    elif sent:
        status = Status.SENT
    else:
        status = Status.ISSUED
    return DocumentState(status, open_amount, paid, doc.credited, written_off, refunded,
                         days_overdue, fs)
