"""Provisional usage and spend, prepaid balances and alerts in Postgres (issue 16; docs/ALERTS.md).

Called by the ledger store (:func:`sinks.ledger.apply_batch`) inside the transaction that applies
a batch, with the (customer, meter, period) keys whose windows the batch changed:

1. :func:`refresh_provisional` rates ONLY those keys with ``pricing.rater`` — the same code and
   price books as the final charges — over the latest revision of each rated window
   (``aggregated_usage``) and the accepted events' accumulators of the windows not rated yet
   (``window_progress``, updated in the same transaction as every batch): so once every window of
   the period is rated, the provisional amount is Σ rated charges to the unrounded digit.
2. :func:`evaluate_alerts` evaluates the alert rules of the customers concerned and inserts the
   alerts (``ON CONFLICT (alert_id) DO NOTHING``) and their outbox rows in the same transaction.
   Exactly once in Postgres: the offsets commit with them. The publisher
   (``jobs/consumers/alerts_publisher.py``) moves the outbox to Kafka after commit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg

from billing.alerts import (
    BALANCE_SCOPE,
    LEVELS,
    PERIOD_KINDS,
    AlertRule,
    LevelState,
    alert_id,
    crossed,
    rules_for,
    step,
)
from pricing.errors import PricingError
from pricing.periods import isoformat_utc, period_end
from pricing.rater import PeriodRater
from sinks.db import scalar
from sinks.pricebook_store import PriceBooks, RatingError

log = logging.getLogger("meterflow.alerts")

PeriodKey = tuple[str, str, datetime]  # customer, meter, period_start
NOTIFY_CHANNEL = "meterflow_alerts"
_LOCK_NAMESPACE = 0x414C  # "AL": alert evaluation, one advisory lock per customer
ZERO = Decimal(0)


@dataclass(frozen=True)
class Provisional:
    customer_id: str
    meter: str
    period_start: datetime
    currency: str
    quantity: Decimal
    amount: Decimal
    windows: int
    open_windows: int


def period_window_quantities(conn: psycopg.Connection, periods: Sequence[PeriodKey],
                             aggregations: Mapping[str, str]
                             ) -> dict[PeriodKey, tuple[dict[datetime, Decimal], int]]:
    """Per period: window_start → the quantity final rating uses (the latest revision of a rated
    window; the accepted events' Σ / count / max of a window not rated yet), and how many of them
    are not rated yet."""
    out: dict[PeriodKey, tuple[dict[datetime, Decimal], int]] = {k: ({}, 0) for k in periods}
    if not periods:
        return out
    rows = conn.execute(
        """WITH k AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
                        AS k(c, m, ps, pe))
           SELECT * FROM (
             SELECT DISTINCT ON (a.customer_id, a.meter, a.window_start)
                    k.c, k.m, k.ps, a.window_start, a.quantity, a.qsum, a.event_count, a.qmax, false
               FROM k JOIN billing.aggregated_usage a
                 ON a.customer_id = k.c AND a.meter = k.m AND a.window_start >= k.ps AND a.window_start < k.pe
              ORDER BY a.customer_id, a.meter, a.window_start, a.revision DESC) rated
           UNION ALL
           SELECT k.c, k.m, k.ps, p.window_start, NULL, p.qsum, p.qcount, p.qmax, true
             FROM k JOIN billing.window_progress p
               ON p.customer_id = k.c AND p.meter = k.m AND p.window_start >= k.ps AND p.window_start < k.pe
            WHERE p.qcount > 0
              AND NOT EXISTS (SELECT 1 FROM billing.aggregated_usage a WHERE a.customer_id = p.customer_id
                                 AND a.meter = p.meter AND a.window_start = p.window_start)""",
        ([k[0] for k in periods], [k[1] for k in periods], [k[2] for k in periods],
         [period_end(k[2]) for k in periods]),
    ).fetchall()
    for c, m, ps, ws, q, qsum, qcount, qmax, is_open in rows:
        windows, n_open = out[(c, m, ps)]
        if is_open:
            agg = aggregations.get(m, "sum")
            q = Decimal(qcount) if agg == "count" else (qmax if agg == "max" else qsum)
            n_open += 1
        windows[ws] = q
        out[(c, m, ps)] = (windows, n_open)
    return out


def open_window_quantities(conn: psycopg.Connection, rated: Mapping[PeriodKey, Mapping[datetime, Decimal]],
                           aggregations: Mapping[str, str]
                           ) -> dict[PeriodKey, tuple[dict[datetime, Decimal], int]]:
    """Like :func:`period_window_quantities`, when the caller knows the rated windows' latest
    quantities already (the ledger store does: it has just loaded and revised them): only the
    accumulators of the periods' windows are read (one primary-key range per period)."""
    keys = list(rated)
    out: dict[PeriodKey, tuple[dict[datetime, Decimal], int]] = {k: (dict(rated[k]), 0) for k in keys}
    if not keys:
        return out
    for c, m, ps, ws, qsum, qcount, qmax in conn.execute(
        """SELECT k.c, k.m, k.ps, p.window_start, p.qsum, p.qcount, p.qmax
             FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[]) AS k(c, m, ps, pe)
             JOIN billing.window_progress p
               ON p.customer_id = k.c AND p.meter = k.m AND p.window_start >= k.ps AND p.window_start < k.pe
            WHERE p.qcount > 0""",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
         [period_end(k[2]) for k in keys]),
    ):
        windows, n_open = out[(c, m, ps)]
        if ws in windows:  # rated: its latest revision counts
            continue
        agg = aggregations.get(m, "sum")
        windows[ws] = Decimal(qcount) if agg == "count" else (qmax if agg == "max" else qsum)
        out[(c, m, ps)] = (windows, n_open + 1)
    return out


def refresh_provisional(conn: psycopg.Connection, periods: Iterable[PeriodKey], books: PriceBooks,
                        aggregations: Mapping[str, str],
                        rated: Mapping[PeriodKey, Mapping[datetime, Decimal]] | None = None,
                        ) -> list[Provisional]:
    """Re-rate these (customer, meter, period)s provisionally and store them (see the module
    docstring). ``rated``: the rated windows' latest quantities of those periods the caller has
    them of (the other periods' are read). A key that cannot be rated (no price book, no version,
    meter not priced) keeps no provisional row: the ledger records its rating error.

    Rate(period) comes from :class:`pricing.rater.PeriodRater` restored with the windows — the
    telescoped form whose Σ of delta charges the ledger records — not a second formula."""
    keys = sorted(set(periods))
    have = [k for k in keys if rated is not None and k in rated]
    rest = [k for k in keys if rated is None or k not in rated]
    quantities = (open_window_quantities(conn, {k: rated[k] for k in have}, aggregations)
                  if rated is not None and have else {})
    if rest:
        quantities.update(period_window_quantities(conn, rest, aggregations))
    out: list[Provisional] = []
    for (c, m, ps), (windows, n_open) in quantities.items():
        agg = aggregations.get(m, "sum")
        try:
            book = books.book_for(c)
            rate = PeriodRater(book, c, m, ps, agg, windows=windows).rate  # type: ignore[arg-type]
        except (RatingError, PricingError, ValueError) as e:
            log.debug("no provisional spend for %s/%s %s: %s", c, m, ps.date(), e)
            continue
        vals = windows.values()
        q = max(vals, default=ZERO) if agg == "max" else sum(vals, ZERO)
        out.append(Provisional(c, m, ps, book.currency, q, rate, len(windows), n_open))
    if out:
        conn.execute(
            """INSERT INTO billing.provisional_spend AS p (customer_id, meter, period_start, currency,
                      quantity, amount, windows, open_windows)
               SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[],
                                    %s::numeric[], %s::numeric[], %s::int[], %s::int[])
               ON CONFLICT (customer_id, meter, period_start) DO UPDATE
                 SET currency = EXCLUDED.currency, quantity = EXCLUDED.quantity,
                     amount = EXCLUDED.amount, windows = EXCLUDED.windows,
                     open_windows = EXCLUDED.open_windows, as_of = clock_timestamp()""",
            ([p.customer_id for p in out], [p.meter for p in out], [p.period_start for p in out],
             [p.currency for p in out], [p.quantity for p in out], [p.amount for p in out],
             [p.windows for p in out], [p.open_windows for p in out]),
        )
    return out


# --- balances ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Balance:
    """A customer's prepaid balance in one currency."""

    customer_id: str
    currency: str
    granted: Decimal  # Σ credits granted
    remaining: Decimal  # Σ what invoices have not applied of them
    unbilled: Decimal  # Σ provisional spend of the periods without a standard invoice
    credit_limit: Decimal | None
    minimum_balance: Decimal | None

    @property
    def balance(self) -> Decimal:
        """The ongoing balance: remaining credits − unbilled provisional spend."""
        return self.remaining - self.unbilled

    @property
    def credit_used_percent(self) -> Decimal | None:
        """What usage ran past the credits, in % of the credit limit (None: no limit)."""
        if not self.credit_limit:
            return None
        return max(-self.balance, ZERO) * 100 / self.credit_limit


def balances(conn: psycopg.Connection, customers: Sequence[str] | None = None) -> list[Balance]:
    """The ongoing balances of these customers (all: None), per currency; a customer without
    credits or spend still has one in its own currency."""
    rows = conn.execute(
        """WITH cust AS (
             SELECT customer_id, currency AS home, credit_limit, minimum_balance FROM billing.customers
              WHERE %(cs)s::text[] IS NULL OR customer_id = ANY (%(cs)s)),
           cr AS (
             SELECT c.customer_id, c.currency, sum(c.amount) AS granted,
                    sum(c.amount - coalesce((SELECT sum(a.amount) FROM billing.credit_applications a
                                              WHERE a.credit_id = c.credit_id), 0)) AS remaining
               FROM billing.credits c JOIN cust USING (customer_id) GROUP BY 1, 2),
           un AS (
             SELECT p.customer_id, p.currency, sum(p.amount) AS unbilled
               FROM billing.provisional_spend p JOIN cust USING (customer_id)
              WHERE NOT EXISTS (SELECT 1 FROM billing.invoices i WHERE i.customer_id = p.customer_id
                                   AND i.period_start = p.period_start AND i.kind = 'standard')
              GROUP BY 1, 2),
           cur AS (SELECT customer_id, home AS currency FROM cust
                   UNION SELECT customer_id, currency FROM cr UNION SELECT customer_id, currency FROM un)
           SELECT cur.customer_id, cur.currency, coalesce(cr.granted, 0), coalesce(cr.remaining, 0),
                  coalesce(un.unbilled, 0), cust.credit_limit, cust.minimum_balance
             FROM cur JOIN cust USING (customer_id)
             LEFT JOIN cr USING (customer_id, currency) LEFT JOIN un USING (customer_id, currency)
            ORDER BY 1, 2""",
        {"cs": list(customers) if customers is not None else None},
    ).fetchall()
    return [Balance(c, cur.strip(), g, r, u, lim, mb) for c, cur, g, r, u, lim, mb in rows]


# --- rules and alerts -------------------------------------------------------------------------


class AlertRules:
    """The stored rules, cached until a load changes them."""

    def __init__(self) -> None:
        self._stamp: Any = None
        self.rules: list[AlertRule] = []

    def refresh(self, conn: psycopg.Connection) -> list[AlertRule]:
        stamp = conn.execute("SELECT count(*), max(loaded_at) FROM billing.alert_rules").fetchone()
        if stamp != self._stamp:
            self.rules = [
                AlertRule(rule_id=r, kind=k, customer_id=c or None, meter=m,
                          currency=cur.strip() if cur else None, direction=d, levels=lv)
                for r, c, k, m, cur, d, lv in conn.execute(
                    "SELECT rule_id, customer_id, kind, meter, currency, direction, levels "
                    "FROM billing.alert_rules ORDER BY rule_id, customer_id")]
            self._stamp = stamp
        return self.rules


def store_rules(conn: psycopg.Connection, rules: Sequence[AlertRule]) -> tuple[int, int]:
    """Replace the rule set with ``rules`` in one transaction; returns (rules before, after).
    Alert state and alerts stay: a rule loaded again under the same id keeps its crossings."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterflow.alert_rules'))")
        before = scalar(conn, "SELECT count(*) FROM billing.alert_rules")
        conn.execute("DELETE FROM billing.alert_rules")
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO billing.alert_rules (rule_id, customer_id, kind, meter, currency,
                          direction, levels) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)""",
                [(r.rule_id, r.customer_id or "", r.kind, r.meter, r.currency, r.direction,
                  orjson.dumps({k: str(v) for k, v in r.levels.items()}).decode()) for r in rules],
            )
    return before, len(rules)


@dataclass(frozen=True)
class Alert:
    alert_id: str
    rule_id: str
    kind: str
    customer_id: str
    scope: str
    period_start: datetime | None
    level: str
    status: str
    crossing: int
    direction: str
    threshold: Decimal
    value: Decimal
    meter: str | None
    currency: str | None


def lock_customers(conn: psycopg.Connection, customers: Iterable[str]) -> None:
    """One advisory transaction lock per customer, in a fixed order: the writers that evaluate
    one customer's rules take turns (after their period locks, so no cycle)."""
    cs = sorted(set(customers))
    if cs:
        conn.execute("SELECT count(pg_advisory_xact_lock(%s, hashtext(c))) FROM "
                     "(SELECT unnest(%s::text[]) AS c ORDER BY 1) x", (_LOCK_NAMESPACE, cs))


def evaluate_alerts(conn: psycopg.Connection, rules: Sequence[AlertRule],
                    customers: Iterable[str], periods: Mapping[str, set[datetime]] | None = None,
                    ) -> list[Alert]:
    """Evaluate the rules of these customers (usage and spend rules: in ``periods`` of each
    customer, or every period with provisional spend when None) and record what crossed or
    recovered: state, alerts (unique alert_id) and their outbox rows, then NOTIFY the publisher
    (delivered at commit). In the caller's transaction."""
    todo = {c: rs for c in sorted(set(customers)) if (rs := rules_for(list(rules), c))}
    if not todo:
        return []
    cs = list(todo)
    lock_customers(conn, cs)
    period_filter = None if periods is None else {c: sorted(periods.get(c, ())) for c in cs}
    prov: dict[str, list[tuple[str, datetime, str, Decimal, Decimal]]] = defaultdict(list)
    for c, m, ps, cur, q, a in conn.execute(
            "SELECT customer_id, meter, period_start, currency, quantity, amount FROM billing.provisional_spend "
            "WHERE customer_id = ANY (%s)", (cs,)):
        if period_filter is None or ps in period_filter[c]:
            prov[c].append((m, ps, cur.strip(), q, a))
    needs_balance = any(r.kind not in PERIOD_KINDS for rs in todo.values() for r in rs)
    bal: dict[tuple[str, str], Balance] = {}
    home: dict[str, str] = {}
    if needs_balance:
        for b in balances(conn, cs):
            bal[(b.customer_id, b.currency)] = b
    for c, cur in conn.execute("SELECT customer_id, currency FROM billing.customers WHERE customer_id = ANY (%s)",
                               (cs,)):
        home[c] = cur.strip()

    # (rule, customer, scope, level) -> (value, threshold, granted, period_start, meter, currency, rule)
    checks: list[tuple[tuple[str, str, str, str], Decimal, Decimal, Decimal | None, datetime | None,
                       str | None, str | None, AlertRule]] = []
    for c, rs in todo.items():
        for r in rs:
            if r.kind in PERIOD_KINDS:
                cur = r.currency or home.get(c)
                values: dict[datetime, Decimal] = {}
                for m, ps, pcur, q, a in prov[c]:
                    if r.kind == "usage" and m == r.meter:
                        values[ps] = values.get(ps, ZERO) + q
                    elif r.kind == "spend" and pcur == cur:
                        values[ps] = values.get(ps, ZERO) + a
                for ps, v in sorted(values.items()):
                    for lv, t in r.levels.items():
                        checks.append(((r.rule_id, c, isoformat_utc(ps), lv), v, t, None, ps, r.meter,
                                       cur if r.kind == "spend" else None, r))
                continue
            cur = r.currency or home.get(c)
            bb = bal.get((c, cur or ""))
            if bb is None:
                continue
            b = bb
            value: Decimal | None
            if r.kind == "balance":
                value = b.balance
            elif r.kind == "balance_percent":
                value = b.balance * 100 / b.granted if b.granted else None
            elif r.kind == "credit_limit":
                value = b.credit_used_percent
            else:  # minimum_balance: the customer's setting is the threshold
                value = b.balance
            if value is None or (r.kind == "minimum_balance" and b.minimum_balance is None):
                continue
            for lv, t in r.levels.items():
                thr = b.minimum_balance if r.kind == "minimum_balance" and b.minimum_balance is not None else t
                checks.append(((r.rule_id, c, BALANCE_SCOPE, lv), value, thr, b.granted, None, None, cur, r))
    if not checks:
        return []
    keys = [k for k, *_ in checks]
    states = {(r, c, s, lv): LevelState(act, n, g) for r, c, s, lv, act, n, g in conn.execute(
        """SELECT x.rule_id, x.customer_id, x.scope, x.level, x.active, x.crossings, x.granted_at_fire
             FROM billing.alert_state x
             JOIN unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS k(r, c, s, l)
               ON x.rule_id = k.r AND x.customer_id = k.c AND x.scope = k.s AND x.level = k.l""",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys]))}
    alerts: list[Alert] = []
    changed: dict[tuple[str, str, str, str], LevelState] = {}
    for key, value, thr, granted, ps, meter, cur, r in sorted(checks, key=lambda x: (x[0][:3], LEVELS.index(x[0][3]))):
        st = states.get(key) or LevelState()
        before = (st.active, st.crossings, st.granted_at_fire)
        tr = step(st, period_scoped=r.kind in PERIOD_KINDS, is_crossed=crossed(r.direction or "above", value, thr),
                  granted=granted)
        if (st.active, st.crossings, st.granted_at_fire) != before:
            changed[key] = st
        if tr is not None:
            rid, c, scope, level = key
            alerts.append(Alert(str(alert_id(rid, c, scope, level, tr.crossing, tr.status)), rid, r.kind, c,
                                scope, ps, level, tr.status, tr.crossing, r.direction or "above", thr, value,
                                meter, cur))
    if changed:
        ks = sorted(changed)
        conn.execute(
            """INSERT INTO billing.alert_state AS x (rule_id, customer_id, scope, level, active, crossings,
                      granted_at_fire)
               SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bool[],
                                    %s::int[], %s::numeric[])
               ON CONFLICT (rule_id, customer_id, scope, level) DO UPDATE
                 SET active = EXCLUDED.active, crossings = EXCLUDED.crossings,
                     granted_at_fire = EXCLUDED.granted_at_fire, updated_at = clock_timestamp()""",
            ([k[0] for k in ks], [k[1] for k in ks], [k[2] for k in ks], [k[3] for k in ks],
             [changed[k].active for k in ks], [changed[k].crossings for k in ks],
             [changed[k].granted_at_fire for k in ks]))
    if alerts:
        cols = ("alert_id", "rule_id", "kind", "customer_id", "scope", "period_start", "level", "status",
                "crossing", "direction", "threshold", "value", "meter", "currency")
        conn.execute(
            f"""WITH ins AS (
                  INSERT INTO billing.alerts ({", ".join(cols)})
                  SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[],
                                       %s::timestamptz[], %s::text[], %s::text[], %s::int[], %s::text[],
                                       %s::numeric[], %s::numeric[], %s::text[], %s::text[])
                  ON CONFLICT (alert_id) DO NOTHING RETURNING alert_id)
                INSERT INTO billing.alert_outbox (alert_id) SELECT alert_id FROM ins ORDER BY alert_id""",
            tuple([getattr(a, col) for a in alerts] for col in cols))
        conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return alerts


def after_batch(conn: psycopg.Connection, periods: Iterable[PeriodKey], books: PriceBooks,
                aggregations: Mapping[str, str], rules: AlertRules | None,
                rated: Mapping[PeriodKey, Mapping[datetime, Decimal]] | None = None) -> list[Alert]:
    """What the ledger store runs after rating a batch, in its transaction: provisional spend of
    the changed periods (``rated``: see :func:`refresh_provisional`), then the alert rules of
    their customers."""
    keys = sorted(set(periods))
    if not keys:
        return []
    refresh_provisional(conn, keys, books, aggregations, rated)
    if rules is None or not rules.refresh(conn):
        return []
    changed: dict[str, set[datetime]] = defaultdict(set)
    for c, _m, ps in keys:
        changed[c].add(ps)
    return evaluate_alerts(conn, rules.rules, changed, changed)


def alert_json(row: Mapping[str, Any]) -> bytes:
    """The record of an alert on the billing-alerts topic."""
    return orjson.dumps({k: (str(v) if isinstance(v, Decimal) else
                             isoformat_utc(v) if isinstance(v, datetime) else
                             str(v) if k == "alert_id" else v) for k, v in row.items()})


def check_provisional(conn: psycopg.Connection, period_start: datetime
                      ) -> tuple[list[tuple[str, str, Decimal, Decimal]], int]:
    """Reconcile: provisional spend = Σ rated charges for every (customer, meter) of the period
    whose windows are all rated. Returns the mismatches (customer, meter, provisional, charged)
    and how many keys still have windows not rated (not compared)."""
    rows = conn.execute(
        """SELECT p.customer_id, p.meter, p.amount, p.open_windows,
                  coalesce((SELECT sum(r.amount) FROM billing.rated_charges r
                             WHERE r.customer_id = p.customer_id AND r.meter = p.meter
                               AND r.period_start = p.period_start), 0)
             FROM billing.provisional_spend p WHERE p.period_start = %s ORDER BY 1, 2""",
        (period_start,)).fetchall()
    mism = [(c, m, a, ch) for c, m, a, n_open, ch in rows if n_open == 0 and a != ch]
    return mism, sum(1 for r in rows if r[3])
