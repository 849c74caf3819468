"""Overdue follow-up: ``run(conn, as_of, policy)`` appends the dunning step due for each overdue
invoice, with the reminder as a document (docs/INVOICING.md, "Dunning").

Which step: :func:`billing.dunning.step_due` (pure). Once per invoice and step: the primary key
``(invoice_id, step)`` of ``billing.dunning_notices``; rows are written with
``INSERT … ON CONFLICT DO NOTHING``, so a re-run appends nothing and two runs at the same time
append each notice once (the second waits on the first's row, then skips it). Only invoices and
corrections with an open amount on ``as_of`` past their due date (status ``overdue``) are dunned;
voided, paid and written-off ones are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import psycopg

from billing.dunning import Step, step_due
from jobs.batch.render import Seller, money, render_reminder


@dataclass(frozen=True)
class Notice:
    invoice_number: str
    customer_id: str
    step: str
    days_overdue: int
    open_amount: str
    currency: str


@dataclass
class DunningResult:
    as_of: date
    overdue: int = 0
    appended: list[Notice] = field(default_factory=list)
    already: int = 0  # computed, but another run appended it first


def run(conn: psycopg.Connection, as_of: date, policy: Sequence[Step], seller: Seller
        ) -> DunningResult:
    """Append the due notices of ``as_of`` in one transaction; return what was appended."""
    res = DunningResult(as_of)
    with conn.transaction():
        rows = conn.execute(
            """SELECT s.invoice_id, s.invoice_number, s.customer_id, coalesce(c.name, s.customer_id),
                      s.due_date, s.open_amount, s.currency, s.days_overdue, i.minor_units,
                      coalesce((SELECT array_agg(n.step) FROM billing.dunning_notices n
                                 WHERE n.invoice_id = s.invoice_id), '{}') AS sent
                 FROM billing.document_status(%s) s
                 JOIN billing.invoices i USING (invoice_id)
                 JOIN billing.customers c ON c.customer_id = s.customer_id
                WHERE s.status = 'overdue' AND s.kind <> 'credit_note'
                ORDER BY s.invoice_number""",
            (as_of,),
        ).fetchall()
        res.overdue = len(rows)
        for inv_id, number, customer, name, due, open_amount, currency, days, scale, sent in rows:
            step = step_due(policy, due, as_of, sent)
            if step is None:
                continue
            cur = currency.strip()
            amount = money(open_amount, scale)
            html = render_reminder(step=step.name, number=number, customer=name, due_date=due,
                                   as_of=as_of, open_amount=amount, currency=cur,
                                   days_overdue=days, seller=seller)
            inserted = conn.execute(
                """INSERT INTO billing.dunning_notices (invoice_id, step, step_days, as_of, due_date,
                                                       open_amount, currency, document)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (invoice_id, step) DO NOTHING""",
                (inv_id, step.name, step.days, as_of, due, open_amount, cur, html),
            ).rowcount
            if inserted:
                res.appended.append(Notice(number, customer, step.name, days, amount, cur))
            else:
                res.already += 1
    return res


def policy_from_settings(settings) -> list[Step]:
    return [Step(s.name, s.days) for s in settings.billing.dunning]
