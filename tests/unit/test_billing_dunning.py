"""billing.dunning.step_due: the schedule as a table."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from billing.dunning import Step, step_due

POLICY = (Step("reminder", 3), Step("second_reminder", 14), Step("final_notice", 30))
DUE = date(2026, 3, 1)


@pytest.mark.parametrize(("days_late", "sent", "expected"), [
    (-5, (), None),
    (0, (), None),
    (2, (), None),
    (3, (), "reminder"),
    (3, ("reminder",), None),
    (13, ("reminder",), None),
    (14, ("reminder",), "second_reminder"),
    (20, (), "second_reminder"),            # a late first run: one letter, the one that fits
    (20, ("second_reminder",), None),
    (31, ("reminder",), "final_notice"),
    (31, ("final_notice",), None),
    (400, ("reminder", "second_reminder", "final_notice"), None),
    (20, ("final_notice",), None),          # never an earlier step after a later one
])
def test_step_due(days_late, sent, expected):
    got = step_due(POLICY, DUE, DUE + timedelta(days=days_late), sent)
    assert (got.name if got else None) == expected


def test_empty_policy_sends_nothing():
    assert step_due((), DUE, DUE + timedelta(days=100)) is None
