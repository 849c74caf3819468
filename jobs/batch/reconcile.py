"""``meterflow reconcile --period YYYY-MM``: prove every stage ties out (docs/INVOICING.md).

Checks, each per (customer, meter) so that a mismatch names its key:

a. conservation — input records = accepted + duplicates + rejected. Input and rejected are counted
   on Kafka (the input topic and the DLQ, attributed to the period by the original payload's
   event_time, else by the record timestamp); accepted from ``usage_events``; duplicates from the
   metering job's ``billing.duplicate_counts`` (V003, written by sinks/ledger.py). Skipped with a
   reason when Kafka is off (``--no-kafka``) or the duplicates table does not exist.
b. Σ accepted quantities = Σ final window quantities (``sum`` meters; ``count`` meters compare the
   event count), and accepted events = Σ final window event counts (every meter).
c. Σ final window quantities = Σ rated ``quantity_delta``.
d. Σ invoice lines over all documents of the period = Σ linked charges rounded once per
   (customer, meter) with the line's rounding mode (± the tolerance), and Σ line ``amount_precise``
   = Σ linked charge amounts exactly.
e. no charge is linked twice or to a line of another key, and no charge of a customer that has a
   document for the period is left out.
f. no ledger record of the period was dead-lettered (``billing.ledger_dead_letters``, V006: records
   the ledger writer could not apply, attributed by the time in their payload; one that does not
   parse counts for every period).

The run is recorded in ``billing.reconciliation_runs``. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import psycopg

from pricing.money import minor_units
from pricing.periods import Period, parse_period
from schemas.config import Settings
from schemas.records import dead_letter_original, late_record_attribution
from sinks.db import scalar

Key = tuple[str, str]  # (customer_id, meter)


class TopicKind(Enum):
    """How a topic's records are attributed to a period and (customer, meter)."""

    EVENTS = "events"  # producers' events: their event_time (their timestamp when unreadable)
    DLQ = "dlq"  # dead letters: the original payload inside
    LATE = "late"  # the metering job's late records: their event_time_ms


@dataclass
class Mismatch:
    check: str
    customer_id: str
    meter: str
    expected: str
    actual: str
    note: str = ""


@dataclass
class Check:
    name: str
    status: str  # ok | mismatch | skipped
    detail: str
    mismatches: list[Mismatch] = field(default_factory=list)


@dataclass
class ReconcileReport:
    period: Period
    tolerance_minor_units: int
    checks: list[Check] = field(default_factory=list)
    kafka_checked: bool = False
    run_id: int | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != "mismatch" for c in self.checks)

    @property
    def mismatches(self) -> list[Mismatch]:
        return [m for c in self.checks for m in c.mismatches]


def _compare(check: str, expected: dict[Key, Any], actual: dict[Key, Any], *, tol=None,
             note: str = "") -> list[Mismatch]:
    out = []
    for k in sorted(set(expected) | set(actual)):
        e, a = expected.get(k, 0), actual.get(k, 0)
        allowed = tol(k) if tol else 0
        if abs(Decimal(e) - Decimal(a)) > allowed:
            out.append(Mismatch(check, k[0], k[1], _s(e), _s(a), note))
    return out


def _s(v: Any) -> str:
    if isinstance(v, Decimal):
        return format(v.normalize() if v != 0 else Decimal(0), "f")
    return str(v)


# --- Kafka -------------------------------------------------------------------------------------


def _attribute(payload: Any, record_ts_ms: int | None, period: Period) -> tuple[bool, Key]:
    """Is this record in ``period``, and under which (customer, meter) key ('?' when unknown)?"""
    from schemas.event import parse_event_time

    if isinstance(payload, bytes):
        try:  # as the validator reads it: strict UTF-8 (json.loads(bytes) would pass surrogates, skip a BOM)
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            payload = None
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep for Python: unreadable
            payload = None
    when = None
    cust = meter = "?"
    if isinstance(payload, dict):
        try:
            when = parse_event_time(payload.get("event_time"))
        except Exception:  # noqa: BLE001 - a rejected event may have any event_time
            when = None
        if isinstance(payload.get("customer_id"), str):
            cust = payload["customer_id"]
        if isinstance(payload.get("meter"), str):
            meter = payload["meter"]
    if when is None and record_ts_ms is not None:
        when = datetime.fromtimestamp(record_ts_ms / 1000, tz=UTC)
    return (when is not None and period.start <= when < period.end), (cust, meter)


def count_topic(settings: Settings, topic: str, period: Period, *, kind: TopicKind,
                timeout: float = 10.0) -> Counter[Key]:
    """Count the records of ``topic`` that belong to ``period``, per (customer, meter)."""
    from kafka import KafkaConsumer, TopicPartition

    from schemas.event import dead_letter_keeps_text

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        isolation_level="read_committed",  # the job's topics are written transactionally
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(timeout * 1000),
        request_timeout_ms=max(int(timeout * 1000) + 1000, 5000),
    )
    counts: Counter[Key] = Counter()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return counts
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # Under read_committed these are the last stable offsets. The records below them may all
        # be invisible (aborted transactions, transaction markers): a poll then returns nothing
        # while the position still moves past them, so progress is the position, not the records.
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > consumer.position(tp)}
        deadline = time.monotonic() + max(timeout, 1) * 30
        idle_polls = 0
        last_positions: dict = {}
        while remaining and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=int(timeout * 1000), max_records=5000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= end[tp]:
                        continue  # written after this read began: not in its snapshot
                    if kind is TopicKind.LATE:  # a late record: its event_time_ms, not its payload
                        when, c, m = late_record_attribution(r.value)
                        inside, key = when is not None and period.start <= when < period.end, (c, m)
                    else:
                        payload = dead_letter_original(r.value) if kind is TopicKind.DLQ else r.value
                        if kind is TopicKind.EVENTS and not dead_letter_keeps_text(r.value or b""):
                            # its dead letter keeps only a prefix (or bytes that are not text): both
                            # are attributed alike, by record timestamp (the contract accepts none)
                            payload = None
                        inside, key = _attribute(payload, r.timestamp, period)
                    if inside:
                        counts[key] += 1
            positions = {tp: consumer.position(tp) for tp in remaining}
            moved = batch or positions != last_positions
            last_positions = positions
            remaining = {tp for tp, pos in positions.items() if pos < end[tp]}
            idle_polls = 0 if moved else idle_polls + 1
            if idle_polls >= 3:
                break  # nothing came and no position moved three polls in a row
        if remaining:
            raise RuntimeError(f"timed out reading {topic}: {sorted(str(t) for t in remaining)}")
    finally:
        consumer.close()
    return counts


# --- the checks --------------------------------------------------------------------------------


def _dead_letter_keys(rows: list[tuple[Any, int]], period: Period) -> tuple[Counter[Key], int]:
    """Dead-lettered ledger records of ``period`` per (customer, meter), attributed by the time
    in their payload (an event's event_time_ms, a window's window_start_ms), and the number whose
    period cannot be told (it does not parse, or was cut to its first 8 KiB)."""
    keys: Counter[Key] = Counter()
    unknown = 0
    for payload, _size in rows:
        try:
            d = json.loads(bytes(payload or b""))
            ms = d.get("event_time_ms")
            ms = d.get("window_start_ms") if ms is None else ms
            when = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
        except (ValueError, TypeError, AttributeError, OverflowError, OSError, RecursionError):
            unknown += 1
            continue
        if period.start <= when < period.end:
            c, m = d.get("customer_id"), d.get("meter")
            keys[(c if isinstance(c, str) else "?", m if isinstance(m, str) else "?")] += 1
    return keys, unknown


def _rows(conn, sql: str, params: dict) -> dict[Key, Any]:
    return {(r[0], r[1]): r[2] for r in conn.execute(sql, params)}


def run_reconcile(conn: psycopg.Connection, settings: Settings, period: Period | str, *,
                  use_kafka: bool = True, kafka_timeout: float = 10.0,
                  record: bool = True) -> ReconcileReport:
    if isinstance(period, str):
        period = parse_period(period)
    started = datetime.now(UTC)
    tol_units = settings.billing.reconcile_tolerance_minor_units
    rep = ReconcileReport(period, tol_units)
    p = {"ps": period.start, "pe": period.end}
    aggs = settings.meter_aggregations

    # Read everything in one repeatable-read snapshot so the checks see one state.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        ev = {
            (r[0], r[1]): (r[2], r[3])
            for r in conn.execute(
                """SELECT customer_id, meter, count(*), sum(quantity) FROM billing.usage_events
                    WHERE window_start >= %(ps)s AND window_start < %(pe)s GROUP BY 1, 2""", p)
        }
        win = {
            (r[0], r[1]): (r[2], r[3])
            for r in conn.execute(
                """SELECT customer_id, meter, sum(event_count), sum(quantity)
                     FROM billing.v_current_usage WHERE period_start = %(ps)s GROUP BY 1, 2""", p)
        }
        rated = _rows(conn, """SELECT customer_id, meter, sum(quantity_delta)
                                 FROM billing.rated_charges WHERE period_start = %(ps)s
                                GROUP BY 1, 2""", p)
        has_dups = scalar(conn, "SELECT to_regclass('billing.duplicate_counts') IS NOT NULL")
        dups = {}
        if has_dups:
            # a duplicate belongs where its accepted original is
            dups = _rows(conn, """SELECT u.customer_id, u.meter, sum(d.duplicates)::bigint
                                    FROM billing.duplicate_counts d
                                    JOIN billing.usage_events u USING (event_id)
                                   WHERE u.event_time >= %(ps)s AND u.event_time < %(pe)s
                                   GROUP BY 1, 2""", p)
        # accepted events by event time (the period of an input record is its event time)
        accepted_by_time = _rows(conn, """SELECT customer_id, meter, count(*) FROM billing.usage_events
                                           WHERE event_time >= %(ps)s AND event_time < %(pe)s
                                           GROUP BY 1, 2""", p)
        # invoices: per key, Σ lines, Σ precise, line count, rounding mode of the latest line
        lines = {
            (r[0], r[1]): r[2:]
            for r in conn.execute(
                """SELECT l.customer_id, l.meter, sum(l.amount), sum(l.amount_precise), count(*),
                          (array_agg(l.rounding_mode ORDER BY l.line_id DESC))[1],
                          (array_agg(i.minor_units ORDER BY l.line_id DESC))[1]
                     FROM billing.invoice_lines l JOIN billing.invoices i USING (invoice_id)
                    WHERE i.period_start = %(ps)s GROUP BY 1, 2""", p)
        }
        linked = {
            (r[0], r[1]): r[2:]
            for r in conn.execute(
                """SELECT c.customer_id, c.meter, sum(c.amount), count(*)
                     FROM billing.invoice_line_links lc
                     JOIN billing.invoice_lines l ON l.line_id = lc.line_id
                     JOIN billing.rated_charges c ON c.charge_seq = lc.charge_seq
                    WHERE l.period_start = %(ps)s GROUP BY 1, 2""", p)
        }
        rounded_linked = {
            (r[0], r[1]): r[2]
            for r in conn.execute(
                """WITH k AS (
                     SELECT l.customer_id, l.meter,
                            (array_agg(l.rounding_mode ORDER BY l.line_id DESC))[1] AS mode,
                            (array_agg(i.minor_units ORDER BY l.line_id DESC))[1] AS scale
                       FROM billing.invoice_lines l JOIN billing.invoices i USING (invoice_id)
                      WHERE i.period_start = %(ps)s GROUP BY 1, 2)
                   SELECT k.customer_id, k.meter,
                          billing.round_money(coalesce(sum(c.amount), 0), k.scale, k.mode)
                     FROM k
                     LEFT JOIN billing.rated_charges c
                       ON c.customer_id = k.customer_id AND c.meter = k.meter
                      AND c.period_start = %(ps)s
                      AND EXISTS (SELECT 1 FROM billing.invoice_line_links lc
                                   WHERE lc.charge_seq = c.charge_seq)
                    GROUP BY k.customer_id, k.meter, k.scale, k.mode""", p)
        }
        twice = conn.execute(
            """SELECT c.customer_id, c.meter, count(*) FROM billing.invoice_line_links lc
                 JOIN billing.rated_charges c ON c.charge_seq = lc.charge_seq
                WHERE c.period_start = %(ps)s
                GROUP BY c.charge_seq, c.customer_id, c.meter HAVING count(*) > 1""", p).fetchall()
        mislinked = conn.execute(
            """SELECT c.customer_id, c.meter, l.customer_id || '/' || l.meter, count(*)
                 FROM billing.invoice_line_links lc
                 JOIN billing.invoice_lines l ON l.line_id = lc.line_id
                 JOIN billing.rated_charges c ON c.charge_seq = lc.charge_seq
                WHERE (c.period_start = %(ps)s OR l.period_start = %(ps)s)
                  AND (c.customer_id, c.meter, c.period_start)
                      IS DISTINCT FROM (l.customer_id, l.meter, l.period_start)
                GROUP BY 1, 2, 3""", p).fetchall()
        left_out = _rows(conn, """SELECT c.customer_id, c.meter, count(*)
                                    FROM billing.rated_charges c
                                   WHERE c.period_start = %(ps)s
                                     AND EXISTS (SELECT 1 FROM billing.invoices i
                                                  WHERE i.customer_id = c.customer_id
                                                    AND i.period_start = %(ps)s)
                                     AND NOT EXISTS (SELECT 1 FROM billing.invoice_line_links lc
                                                      WHERE lc.charge_seq = c.charge_seq)
                                   GROUP BY 1, 2""", p)
        has_dead = scalar(conn, "SELECT to_regclass('billing.ledger_dead_letters') IS NOT NULL")
        dead_letters = conn.execute(
            "SELECT payload, payload_bytes FROM billing.ledger_dead_letters").fetchall() if has_dead else []
        # (g) payments (V010): per issued invoice / correction of the period, the facts
        settlement = conn.execute(
            """SELECT i.customer_id, i.invoice_number, i.total,
                      coalesce((SELECT sum(p.applied) FROM billing.payments p
                                 WHERE p.invoice_id = i.invoice_id), 0) AS applied,
                      coalesce((SELECT sum(e.amount) FROM billing.invoice_events e
                                 WHERE e.invoice_id = i.invoice_id AND e.kind = 'payment'), 0) AS paid,
                      coalesce((SELECT sum(e.amount) FROM billing.invoice_events e
                                 WHERE e.invoice_id = i.invoice_id AND e.kind = 'write_off'), 0) AS wo,
                      s.credited, s.open_amount,
                      (SELECT count(*) FROM billing.payments p
                         LEFT JOIN billing.credits cr ON cr.credit_id = p.credit_id
                        WHERE p.invoice_id = i.invoice_id
                          AND p.amount <> p.applied + coalesce(cr.amount, 0)) AS lost
                 FROM billing.invoices i
                 JOIN billing.document_status(current_date) s USING (invoice_id)
                WHERE i.period_start = %(ps)s AND i.status = 'issued' AND i.kind <> 'credit_note'
                ORDER BY 1, 2""", p).fetchall() if scalar(
            conn, "SELECT to_regclass('billing.payments') IS NOT NULL") else None
        receivables = conn.execute(
            """SELECT s.customer_id, s.currency, sum(s.open_amount)
                 FROM billing.document_status(current_date) s
                 JOIN billing.invoices i USING (invoice_id)
                WHERE i.period_start = %(ps)s AND s.open_amount <> 0
                GROUP BY 1, 2 ORDER BY 1, 2""", p).fetchall() if settlement is not None else []
        uninvoiced = scalar(
            conn, """SELECT count(DISTINCT customer_id) FROM billing.rated_charges c
                WHERE c.period_start = %(ps)s AND NOT EXISTS (
                  SELECT 1 FROM billing.invoices i WHERE i.customer_id = c.customer_id
                     AND i.period_start = %(ps)s)""", p)

    # (a) conservation
    name_a = "a. input = accepted + duplicates + rejected"
    if not use_kafka:
        rep.checks.append(Check(name_a, "skipped", "Kafka not read (--no-kafka)"))
    elif not has_dups:
        rep.checks.append(Check(name_a, "skipped",
                                "billing.duplicate_counts does not exist (migrations not applied?)"))
    else:
        inp = count_topic(settings, settings.topics.events, period, kind=TopicKind.EVENTS,
                          timeout=kafka_timeout)
        rej = count_topic(settings, settings.topics.dlq, period, kind=TopicKind.DLQ, timeout=kafka_timeout)
        late = count_topic(settings, settings.topics.late, period, kind=TopicKind.LATE,
                           timeout=kafka_timeout)
        rep.kafka_checked = True
        expected = dict(inp)
        actual: dict[Key, int] = Counter()
        for src in (accepted_by_time, dups, rej):
            for k, v in src.items():
                actual[k] += v
        mm = _compare(name_a, expected, dict(actual), note="input vs accepted+dup+rejected")
        tot = (sum(inp.values()), sum(accepted_by_time.values()), sum(dups.values()),
               sum(rej.values()))
        rep.checks.append(Check(
            name_a, "mismatch" if mm else "ok",
            f"input {tot[0]} = accepted {tot[1]} + duplicates {tot[2]} + rejected {tot[3]}"
            f" (late topic: {sum(late.values())})", mm))

    # (b) accepted events -> final windows
    name_b = "b. Σ accepted = Σ final windows"
    exp_q, act_q, exp_n, act_n = {}, {}, {}, {}
    for k in set(ev) | set(win):
        n_ev, q_ev = ev.get(k, (0, Decimal(0)))
        n_w, q_w = win.get(k, (0, Decimal(0)))
        exp_n[k], act_n[k] = n_ev, n_w
        agg = aggs.get(k[1], "sum")
        if agg == "sum":
            exp_q[k], act_q[k] = q_ev, q_w
        elif agg == "count":
            exp_q[k], act_q[k] = n_ev, q_w
    mm = _compare(name_b, exp_q, act_q, note="quantity") + _compare(
        name_b, exp_n, act_n, note="event count")
    rep.checks.append(Check(name_b, "mismatch" if mm else "ok",
                            f"{len(set(ev) | set(win))} (customer, meter) keys", mm))

    # (c) final windows -> rated quantities
    name_c = "c. Σ final windows = Σ rated quantity"
    wq = {k: v[1] for k, v in win.items()}
    mm = _compare(name_c, wq, rated, note="quantity")
    rep.checks.append(Check(name_c, "mismatch" if mm else "ok",
                            f"{len(set(wq) | set(rated))} keys", mm))

    # (d) charges -> invoice lines
    name_d = "d. Σ charges rounded per line = Σ invoice lines"

    def tol(k: Key) -> Decimal:
        n_lines, scale = lines[k][2], lines[k][4]
        return Decimal(tol_units * n_lines).scaleb(-scale)

    inv_keys = set(lines)
    exp_amt = {k: rounded_linked.get(k, Decimal(0)) for k in inv_keys}
    act_amt = {k: lines[k][0] for k in inv_keys}
    exp_prec = {k: linked.get(k, (Decimal(0), 0))[0] for k in inv_keys}
    act_prec = {k: lines[k][1] for k in inv_keys}
    mm = _compare(name_d, exp_amt, act_amt, tol=tol, note="rounded amount") + _compare(
        name_d, exp_prec, act_prec, note="precise amount")
    total_lines = sum(act_amt.values(), Decimal(0))
    rep.checks.append(Check(name_d, "mismatch" if mm else "ok",
                            f"{len(inv_keys)} invoiced keys, Σ lines {_s(total_lines)}; "
                            f"{uninvoiced} customers with charges not invoiced yet", mm))

    # (e) each charge invoiced once, none left out
    name_e = "e. no charge invoiced twice or left out"
    mm = [Mismatch(name_e, c, m, "1 link", f"{n} links", "charge invoiced twice")
          for c, m, n in twice]
    mm += [Mismatch(name_e, c, m, f"{c}/{m}", other, f"{n} charges linked to another key")
           for c, m, other, n in mislinked]
    mm += [Mismatch(name_e, k[0], k[1], "0", str(n), "charges of an invoiced period not invoiced")
           for k, n in sorted(left_out.items())]
    rep.checks.append(Check(name_e, "mismatch" if mm else "ok",
                            f"{sum(v[1] for v in linked.values())} charges linked", mm))

    # ledger dead letters: records the ledger writer could not apply (not billed; V006)
    name_f = "f. ledger records dead-lettered"
    if not has_dead:
        rep.checks.append(Check(name_f, "skipped", "billing.ledger_dead_letters does not exist"))
    else:
        keys, unknown = _dead_letter_keys(dead_letters, period)
        mm = [Mismatch(name_f, k[0], k[1], "0", str(n), "not applied: billing.ledger_dead_letters")
              for k, n in sorted(keys.items())]
        if unknown:
            mm.append(Mismatch(name_f, "?", "?", "0", str(unknown),
                               "period unknown (the record does not parse)"))
        rep.checks.append(Check(
            name_f, "mismatch" if mm else "ok",
            f"{sum(keys.values())} in this period, {unknown} of unknown period, "
            f"{len(dead_letters)} in all", mm))

    # (g) payments: facts agree, nothing settled twice, overpayments became credits
    name_g = "g. Σ payments + credit notes + write-offs per invoice vs its total"
    if settlement is None:
        rep.checks.append(Check(name_g, "skipped", "billing.payments does not exist"))
    else:
        mm = []
        for cust, number, total, applied, paid, wo, credited, open_amount, lost in settlement:
            if applied != paid:
                mm.append(Mismatch(name_g, cust, number, _s(applied), _s(paid),
                                   "payments applied vs payment facts"))
            if applied + wo + credited + open_amount != total or open_amount < 0:
                mm.append(Mismatch(name_g, cust, number, _s(total),
                                   _s(applied + wo + credited + open_amount),
                                   "payments + write-offs + credit notes + open vs total"))
            if lost:
                mm.append(Mismatch(name_g, cust, number, "0", str(lost),
                                   "payments whose overpayment is not a credit"))
        open_text = ", ".join(f"{c} {_s(a)} {cur.strip()}" for c, cur, a in receivables) or "none"
        rep.checks.append(Check(
            name_g, "mismatch" if mm else "ok",
            f"{len(settlement)} invoices; open receivables: {open_text}", mm))

    if record:
        with conn.transaction():
            rep.run_id = scalar(
                conn,
                """INSERT INTO billing.reconciliation_runs (period_start, period_end, started_at,
                     ok, tolerance_minor_units, checks, mismatches, kafka_checked)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING run_id""",
                (period.start, period.end, started, rep.ok, tol_units,
                 json.dumps([{k: v for k, v in asdict(c).items() if k != "mismatches"}
                             for c in rep.checks]),
                 json.dumps([asdict(m) for m in rep.mismatches]), rep.kafka_checked),
            )
    return rep


__all__ = ["Check", "Mismatch", "ReconcileReport", "count_topic", "minor_units", "run_reconcile"]
