"""Customer credits in Postgres (``billing.credits``, V001; balances: ``v_credit_balances``, V002).

A credit is money granted to a customer, in the customer's currency, consumed by the invoice run
(jobs/batch/invoicing.py: oldest grant first, up to each invoice's subtotal, whole minor units).
So a credit in another currency would never be used, and a fraction of a minor unit would be
truncated away: both are refused here, before anything is written.

Granting is idempotent by reference: the reference is the ``credit_id``. The same reference with
the same customer, currency, amount and reason again is a no-op; with anything different it is an
error naming what differs (a reference is never re-used for another grant).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg

from pricing.money import canonical_dstr, dstr, minor_units, to_decimal
from sinks.alerts import AlertRules, evaluate_alerts

# billing.credits.amount is numeric(20, 6): at most 14 digits before the point
_MAX_AMOUNT = Decimal(10) ** 14


class CreditError(ValueError):
    """A grant that cannot be written as asked (the message says why); nothing was written."""


@dataclass(frozen=True)
class Credit:
    credit_id: str
    customer_id: str
    currency: str
    amount: Decimal
    granted_at: datetime
    reason: str | None
    applied: Decimal = Decimal(0)
    remaining: Decimal = Decimal(0)


@dataclass(frozen=True)
class GrantResult:
    credit: Credit
    created: bool  # False: the same grant existed under this reference (nothing written)
    alerts: int = 0  # alerts the grant raised (a balance level recovering: `ok`), in its transaction


def parse_amount(text: str | Decimal, currency: str) -> Decimal:
    """A positive Decimal with no more decimals than ``currency`` has minor units."""
    try:
        amount = to_decimal(text, "amount")
    except (TypeError, ValueError) as e:
        raise CreditError(str(e)) from None
    if amount <= 0:
        raise CreditError(f"amount must be positive, got {dstr(amount)}")
    if amount >= _MAX_AMOUNT:
        raise CreditError(
            f"amount {dstr(amount)} is too large (at most 14 digits before the point)"
        )
    try:
        decimals = minor_units(currency)
    except ValueError as e:
        raise CreditError(str(e)) from None
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite (to_decimal)
    if -exponent > decimals and amount != amount.quantize(Decimal(1).scaleb(-decimals)):
        raise CreditError(f"amount {dstr(amount)} has more decimals than {currency}'s {decimals}")
    return amount


def grant_credit(
    conn: psycopg.Connection,
    *,
    customer_id: str,
    amount: str | Decimal,
    currency: str,
    reason: str | None = None,
    reference: str | None = None,
    granted_at: datetime | None = None,
) -> GrantResult:
    """Grant a credit in one transaction; raise :class:`CreditError` (nothing written) for an
    unknown customer, a currency other than the customer's, a non-positive or badly scaled
    amount, or a reference already used for a different grant. ``granted_at`` defaults to the
    database's now() (the invoice run applies credits granted before a period's end)."""
    if reference is not None and not 1 <= len(reference) <= 128:
        raise CreditError("--reference must be 1 to 128 characters")
    if granted_at is not None and granted_at.tzinfo is None:
        raise CreditError("granted_at must be timezone-aware")
    with conn.transaction():
        row = conn.execute(
            "SELECT currency FROM billing.customers WHERE customer_id = %s FOR SHARE",
            (customer_id,),
        ).fetchone()
        if row is None:
            raise CreditError(
                f"unknown customer {customer_id!r} (load it with `meterflow customers load`)"
            )
        customer_currency = row[0].strip()
        if currency != customer_currency:
            raise CreditError(
                f"customer {customer_id!r} is billed in {customer_currency}, not {currency}: "
                "a credit in another currency would never be applied"
            )
        value = parse_amount(amount, currency)
        credit_id = reference or f"credit-{uuid.uuid4().hex}"
        inserted = conn.execute(
            """INSERT INTO billing.credits
                 (credit_id, customer_id, currency, amount, granted_at, description)
               VALUES (%s, %s, %s, %s, coalesce(%s, now()), %s)
               ON CONFLICT (credit_id) DO NOTHING
               RETURNING granted_at""",
            (credit_id, customer_id, currency, value, granted_at, reason),
        ).fetchone()
        if inserted is not None:
            # a top-up may lift the balance back over a level that fired: its `ok` alert now, in
            # this transaction, not when the customer's next usage reaches the ledger
            raised = evaluate_alerts(conn, AlertRules().refresh(conn), [customer_id])
            return GrantResult(
                Credit(
                    credit_id, customer_id, currency, value, inserted[0], reason, Decimal(0), value
                ),
                True,
                len(raised),
            )
        existing = _credits(conn, "cr.credit_id = %s", (credit_id,))[0]
        asked = {"customer": customer_id, "currency": currency, "amount": value, "reason": reason}
        stored = {
            "customer": existing.customer_id,
            "currency": existing.currency,
            "amount": existing.amount,
            "reason": existing.reason,
        }
        differs = [
            f"{k} {_show(stored[k])} (asked {_show(asked[k])})"
            for k in asked
            if stored[k] != asked[k]
        ]
        if differs:
            raise CreditError(
                f"reference {credit_id!r} is already a different credit: " + "; ".join(differs)
            )
        return GrantResult(existing, False)


def list_credits(conn: psycopg.Connection, customer_id: str | None = None) -> list[Credit]:
    """Credits (all, or one customer's) with what invoices have applied and what remains,
    oldest grant first (the order the invoice run consumes them). An unknown customer is a
    :class:`CreditError`, not an empty list (a typo must not read as "no credits")."""
    if customer_id is None:
        return _credits(conn, "true", ())
    if (
        conn.execute(
            "SELECT 1 FROM billing.customers WHERE customer_id = %s", (customer_id,)
        ).fetchone()
        is None
    ):
        raise CreditError(f"unknown customer {customer_id!r}")
    return _credits(conn, "cr.customer_id = %s", (customer_id,))


def _credits(conn: psycopg.Connection, where: str, params: tuple[object, ...]) -> list[Credit]:
    rows = conn.execute(
        f"""SELECT cr.credit_id, cr.customer_id, cr.currency, cr.amount, cr.granted_at,
                   cr.description, b.applied, b.remaining
              FROM billing.credits cr JOIN billing.v_credit_balances b USING (credit_id)
             WHERE {where}
             ORDER BY cr.customer_id, cr.granted_at, cr.credit_id""",
        params,
    ).fetchall()
    return [Credit(r[0], r[1], r[2].strip(), r[3], r[4], r[5], r[6], r[7]) for r in rows]


def _show(v: object) -> str:
    return canonical_dstr(v) if isinstance(v, Decimal) else repr(v)
