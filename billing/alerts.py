"""Alert rules and the crossing rules of their levels (issue 16; docs/ALERTS.md). Pure: no I/O.

Rules file (TOML or JSON)::

    [[rules]]
    rule_id = "api-usage"
    kind = "usage"              # usage | spend | balance | balance_percent | credit_limit | minimum_balance
    meter = "api_calls"         # usage only
    customer_id = "acme"        # optional; without it the rule is the default for every customer
    direction = "above"         # optional: above (usage, spend, credit_limit) | below (the balance kinds)
    currency = "USD"            # optional (spend and balance kinds): default the customer's currency
    levels = { info = "1000", warning = "5000", critical = "10000" }

A customer's own rule replaces the default rule of the same ``rule_id``. What a level compares:

* ``usage``: the provisional quantity of the meter in the billing period;
* ``spend``: Σ provisional spend of the period, all meters, in one currency (unrounded);
* ``balance``: the ongoing balance = Σ remaining credits − unbilled provisional spend;
* ``balance_percent``: the ongoing balance in % of Σ credits granted;
* ``credit_limit``: what usage ran past the credits (−balance when negative) in % of the
  customer's credit limit (levels default ``{critical = "100"}``: the limit reached);
* ``minimum_balance``: the balance against the customer's minimum balance (one level,
  ``critical`` unless ``levels`` names another with any threshold; the customer's setting is used).

A level is crossed when the value reaches its threshold: ``value >= threshold`` (above) or
``value <= threshold`` (below) — exactly at the threshold counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pricing.book import DecimalIn
from pricing.money import validate_currency
from pricing.reference import _read, _validate

LEVELS = ("info", "warning", "critical")
Level = Literal["info", "warning", "critical"]
Kind = Literal["usage", "spend", "balance", "balance_percent", "credit_limit", "minimum_balance"]
PERIOD_KINDS = frozenset({"usage", "spend"})  # scoped to a billing period; the others: the balance
BALANCE_SCOPE = "balance"
_ALERT_NS = uuid.UUID("5b0f4c1e-8a55-4c43-9d0f-6d6574657266")  # meterflow alerts


class AlertRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule_id: Annotated[str, Field(min_length=1, max_length=128)]
    kind: Kind
    customer_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    meter: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    currency: str | None = None
    direction: Literal["above", "below"] | None = None
    levels: dict[Level, DecimalIn] = Field(default_factory=dict)

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str | None) -> str | None:
        return None if v is None else validate_currency(v)

    @model_validator(mode="after")
    def _check(self) -> AlertRule:
        if (self.kind == "usage") != (self.meter is not None):
            raise ValueError("meter is required for kind 'usage' and only allowed there")
        if self.kind == "usage" and self.currency is not None:
            raise ValueError("currency is not allowed for kind 'usage'")
        if self.kind == "credit_limit" and not self.levels:
            object.__setattr__(self, "levels", {"critical": Decimal(100)})
        if self.kind == "minimum_balance":
            if not self.levels:
                object.__setattr__(self, "levels", {"critical": Decimal(0)})
            if len(self.levels) != 1:
                raise ValueError("kind 'minimum_balance' has one level (the customer's minimum balance)")
        if not 1 <= len(self.levels) <= 3:
            raise ValueError("levels: one to three of info, warning, critical")
        if self.direction is None:
            object.__setattr__(self, "direction", self.default_direction(self.kind))
        ordered = [self.levels[lv] for lv in LEVELS if lv in self.levels]
        if self.kind != "minimum_balance":
            up = self.direction == "above"
            if any((b <= a) if up else (b >= a) for a, b in zip(ordered, ordered[1:], strict=False)):
                raise ValueError(f"levels must get more severe in the rule's direction ({self.direction}): "
                                 "info, warning, critical thresholds " + ("rising" if up else "falling"))
        return self

    @staticmethod
    def default_direction(kind: str) -> str:
        return "below" if kind in ("balance", "balance_percent", "minimum_balance") else "above"


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[AlertRule]

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[AlertRule]) -> list[AlertRule]:
        seen: set[tuple[str, str | None]] = set()
        for r in v:
            if (r.rule_id, r.customer_id) in seen:
                raise ValueError(f"rule {r.rule_id!r} is listed twice for "
                                 + (f"customer {r.customer_id!r}" if r.customer_id else "the default"))
            seen.add((r.rule_id, r.customer_id))
        return v


def load_rules(path: str | Path) -> list[AlertRule]:
    return _validate(RulesFile, _read(path, "alert rules"), str(path), "alert rules").rules


def rules_from_data(data: Any, source: str = "<data>") -> list[AlertRule]:
    return _validate(RulesFile, data, source, "alert rules").rules


def rules_for(rules: list[AlertRule], customer_id: str) -> list[AlertRule]:
    """The rules that apply to a customer: its own, and the defaults it has no own rule for."""
    own = {r.rule_id for r in rules if r.customer_id == customer_id}
    return [r for r in rules if r.customer_id == customer_id or (r.customer_id is None and r.rule_id not in own)]


def crossed(direction: str, value: Decimal, threshold: Decimal) -> bool:
    return value >= threshold if direction == "above" else value <= threshold


def alert_id(rule_id: str, customer_id: str, scope: str, level: str, crossing: int, status: str) -> uuid.UUID:
    """Deterministic: the same crossing always gets the same id (replays insert nothing twice,
    consumers of the topic dedup by it)."""
    return uuid.uuid5(_ALERT_NS, "\x1f".join((rule_id, customer_id, scope, level, str(crossing), status)))


@dataclass
class LevelState:
    active: bool = False
    crossings: int = 0
    granted_at_fire: Decimal | None = None


@dataclass(frozen=True)
class Transition:
    status: str  # firing | ok
    crossing: int


def step(state: LevelState, *, period_scoped: bool, is_crossed: bool,
         granted: Decimal | None) -> Transition | None:
    """Advance one level's state with the current value; return the alert to emit, if any.

    * Not active and crossed: a new crossing (``firing``, crossing number + 1).
    * Period-scoped levels (usage, spend) stay crossed for the rest of the period: a late event or
      a re-rating that lowers the value does not re-arm them, so the next rise is not alerted twice.
    * Balance levels recover (``ok``) only after a top-up — Σ credits granted above what it was
      when the level fired — has lifted the value back across the threshold; a balance that
      rises because a correction lowered the spend stays in alert, so it cannot fire again for
      the same crossing."""
    if not state.active:
        if is_crossed:
            state.active = True
            state.crossings += 1
            state.granted_at_fire = granted
            return Transition("firing", state.crossings)
        return None
    if is_crossed or period_scoped:
        return None
    if granted is not None and state.granted_at_fire is not None and granted > state.granted_at_fire:
        state.active = False
        return Transition("ok", state.crossings)
    return None
