"""Alert rules (billing/alerts.py): the rules file, which rules apply, the crossing rules."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.alerts import (
    LevelState,
    alert_id,
    crossed,
    load_rules,
    rules_for,
    rules_from_data,
    step,
)
from pricing.errors import PricingError


def test_a_rules_file_parses_with_defaults(tmp_path) -> None:
    f = tmp_path / "rules.toml"
    f.write_text("""
[[rules]]
rule_id = "usage"
kind = "usage"
meter = "api_calls"
levels = { info = "100", warning = "500", critical = "1000" }

[[rules]]
rule_id = "low"
kind = "balance"
levels = { warning = "50", critical = "0" }

[[rules]]
rule_id = "limit"
kind = "credit_limit"
customer_id = "acme"
""")
    usage, low, limit = load_rules(f)
    assert usage.direction == "above" and usage.levels["critical"] == Decimal(1000)
    assert low.direction == "below"
    assert limit.levels == {"critical": Decimal(100)} and limit.customer_id == "acme"


@pytest.mark.parametrize("rule, message", [
    ({"rule_id": "r", "kind": "usage", "levels": {"info": "1"}}, "meter is required"),
    ({"rule_id": "r", "kind": "spend", "levels": {}}, "one to three"),
    ({"rule_id": "r", "kind": "spend", "levels": {"info": "10", "critical": "5"}}, "more severe"),
    ({"rule_id": "r", "kind": "balance", "levels": {"info": "0", "critical": "10"}}, "more severe"),
    ({"rule_id": "r", "kind": "spend", "levels": {"panic": "1"}}, "panic"),
    ({"rule_id": "r", "kind": "spend", "currency": "XXQ", "levels": {"info": "1"}}, "currency"),
    ({"rule_id": "r", "kind": "spend", "levels": {"info": "ten"}}, "info"),
])
def test_invalid_rules_are_refused_naming_the_field(rule, message) -> None:
    with pytest.raises(PricingError, match=message):
        rules_from_data({"rules": [rule]})


def test_a_customers_own_rule_replaces_the_default_of_the_same_id() -> None:
    rules = rules_from_data({"rules": [
        {"rule_id": "spend", "kind": "spend", "levels": {"info": "100"}},
        {"rule_id": "spend", "kind": "spend", "customer_id": "big", "levels": {"info": "10000"}},
        {"rule_id": "low", "kind": "balance", "levels": {"critical": "0"}},
    ]})
    assert [(r.rule_id, r.customer_id) for r in rules_for(rules, "big")] == [("spend", "big"), ("low", None)]
    assert [(r.rule_id, r.customer_id) for r in rules_for(rules, "small")] == [("spend", None), ("low", None)]


def test_exactly_at_the_threshold_is_crossed() -> None:
    assert crossed("above", Decimal("10"), Decimal("10.000"))
    assert not crossed("above", Decimal("9.999999"), Decimal("10"))
    assert crossed("below", Decimal("0"), Decimal("0"))
    assert not crossed("below", Decimal("0.000001"), Decimal("0"))


def test_alert_ids_are_deterministic_and_differ_per_crossing_and_status() -> None:
    a = alert_id("r", "c", "2026-11-01T00:00:00Z", "info", 1, "firing")
    assert a == alert_id("r", "c", "2026-11-01T00:00:00Z", "info", 1, "firing")
    assert len({a, alert_id("r", "c", "2026-11-01T00:00:00Z", "info", 2, "firing"),
                alert_id("r", "c", "2026-11-01T00:00:00Z", "info", 1, "ok"),
                alert_id("r", "c", "2026-11-01T00:00:00Z", "warning", 1, "firing")}) == 4


def test_a_period_level_fires_once_even_when_a_correction_lowers_and_usage_raises_it_again() -> None:
    st = LevelState()
    assert step(st, period_scoped=True, is_crossed=True, granted=None).crossing == 1
    assert step(st, period_scoped=True, is_crossed=False, granted=None) is None  # re-rated down
    assert step(st, period_scoped=True, is_crossed=True, granted=None) is None  # up again: same crossing


def test_a_balance_level_recovers_only_after_a_top_up_and_then_fires_a_second_crossing() -> None:
    st = LevelState()
    assert step(st, period_scoped=False, is_crossed=True, granted=Decimal(100)).status == "firing"
    # a correction lowered the spend: the balance is back above, but nothing was topped up
    assert step(st, period_scoped=False, is_crossed=False, granted=Decimal(100)) is None
    assert step(st, period_scoped=False, is_crossed=True, granted=Decimal(100)) is None
    tr = step(st, period_scoped=False, is_crossed=False, granted=Decimal(150))  # a top-up
    assert (tr.status, tr.crossing) == ("ok", 1)
    tr = step(st, period_scoped=False, is_crossed=True, granted=Decimal(150))
    assert (tr.status, tr.crossing) == ("firing", 2)


def test_customers_take_an_optional_credit_limit_and_minimum_balance() -> None:
    from pricing.reference import customers_from_data

    base = {"customer_id": "a", "price_book_id": "b", "currency": "USD"}
    (c,) = customers_from_data({"customers": [{**base, "credit_limit": "500", "minimum_balance": "-20"}]})
    assert (c.credit_limit, c.minimum_balance) == (Decimal(500), Decimal(-20))
    assert customers_from_data({"customers": [base]})[0].credit_limit is None
    with pytest.raises(PricingError, match="credit_limit must be >= 0"):
        customers_from_data({"customers": [{**base, "credit_limit": "-1"}]})
