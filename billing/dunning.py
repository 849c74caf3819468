"""The dunning schedule: which reminder an overdue invoice gets on a date. Pure.

The policy (config ``[[billing.dunning]]``) is a list of steps with increasing ``days`` after the
due date, e.g. reminder +3, second_reminder +14, final_notice +30. On ``as_of`` an invoice with
an open amount gets the *latest* step whose day has come, unless that step or a later one was
already sent: a run that happens late (or the first run after a long pause) sends one letter —
the one that fits the invoice's age — not the whole backlog, and never an earlier step after a
later one. Each step is sent at most once per invoice (the database's primary key makes sure).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class Step:
    name: str
    days: int


def step_due(policy: Sequence[Step], due_date: date, as_of: date,
             sent: Collection[str] = ()) -> Step | None:
    """The step to send on ``as_of`` for an invoice due on ``due_date`` (None: nothing to send).

    ``sent``: the names of the steps already sent for it. The caller only asks for invoices
    with something open.
    """
    reached = [s for s in policy if due_date + timedelta(days=s.days) <= as_of]
    if not reached:
        return None
    latest = reached[-1]
    later_or_same = {s.name for s in policy[policy.index(latest):]}
    if later_or_same & set(sent):
        return None
    return latest
