"""Provisional spend, prepaid balances and alerts on a real PostgreSQL (docs/ALERTS.md): the
ledger store rates the changed periods provisionally and evaluates the alert rules in the
transaction of each batch; alerts are exactly once in Postgres, at-least-once on Kafka."""

from __future__ import annotations

import itertools
import uuid
from datetime import date
from decimal import Decimal

import orjson
import psycopg
import pytest

from billing.alerts import rules_from_data
from jobs.consumers.alerts_publisher import make_producer, publish_pending
from jobs.consumers.rerating import apply_late_batch, rerate_scope
from pricing.book import price_book_from_data
from pricing.rater import rate_period
from sinks.alerts import balances, check_provisional, evaluate_alerts, store_rules
from sinks.credits_store import grant_credit
from sinks.db import connect
from sinks.ledger import StaleBatchError, apply_batch
from sinks.pricebook_store import PriceBooks, store_price_books
from tests.integration.dbutil import fresh_database
from tests.integration.test_ledger import BOOK, NOV, H, Offsets, ev, fire, firing, late, seed_prices

pytestmark = pytest.mark.integration

AGG = {"api_calls": "sum", "active_seats": "max"}
FLAT = {"price_book_id": "flat-usd", "currency": "USD", "versions": [
    {"name": "v1", "effective_from": "2026-01-01T00:00:00Z",
     "prices": [{"meter": "api_calls", "model": "flat", "unit_price": "0.10"}]}]}
EUR = {"price_book_id": "flat-eur", "currency": "EUR", "versions": [
    {"name": "v1", "effective_from": "2026-01-01T00:00:00Z",
     "prices": [{"meter": "api_calls", "model": "flat", "unit_price": "0.50"}]}]}
_n = itertools.count()


@pytest.fixture(scope="module")
def settings():
    with fresh_database() as s:
        with connect(s) as conn:
            seed_prices(conn, BOOK, customers=["p1", "p2"])
            store_price_books(conn, [price_book_from_data(FLAT), price_book_from_data(EUR)])
        yield s


def customer(conn: psycopg.Connection, book: str = "flat-usd", currency: str = "USD", **extra) -> str:
    c = f"cust-{next(_n)}"
    conn.execute("INSERT INTO customers (customer_id, price_book_id, currency, credit_limit, minimum_balance) "
                 "VALUES (%s, %s, %s, %s, %s)",
                 (c, book, currency, extra.get("credit_limit"), extra.get("minimum_balance")))
    conn.commit()
    return c


def rules(conn: psycopg.Connection, *rs: dict) -> None:
    store_rules(conn, rules_from_data({"rules": list(rs)}))


def apply(conn, off, items, consumer="t"):
    return apply_batch(conn, off.batch(items), consumer=consumer, books=PriceBooks(), aggregations=AGG)


def alerts(conn, c: str) -> list[tuple]:
    return conn.execute("SELECT rule_id, level, status, crossing, value FROM alerts WHERE customer_id = %s "
                        "ORDER BY created_at, level", (c,)).fetchall()


def provisional(conn, c: str, meter: str = "api_calls"):
    return conn.execute("SELECT quantity, amount, windows, open_windows FROM provisional_spend "
                        "WHERE customer_id = %s AND meter = %s AND period_start = %s", (c, meter, NOV)).fetchone()


def charged(conn, c: str, meter: str = "api_calls") -> Decimal:
    return conn.execute("SELECT coalesce(sum(amount), 0) FROM rated_charges WHERE customer_id = %s AND meter = %s",
                        (c, meter)).fetchone()[0]


def test_provisional_spend_counts_windows_not_fired_yet_and_equals_the_charges_once_final(settings) -> None:
    book = price_book_from_data(BOOK)
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        evs = [ev("p1", "api_calls", NOV + i * H, q) for i, q in enumerate(["600", "300", "250"])]
        apply(conn, off, evs, "prov")  # nothing fired: no charge yet
        assert charged(conn, "p1") == 0
        q, amount, n, n_open = provisional(conn, "p1")
        assert (q, n, n_open) == (Decimal(1150), 3, 3)
        assert amount == rate_period(book, "api_calls", {NOV: 600, NOV + H: 300, NOV + 2 * H: 250}) == Decimal("112.0")
        apply(conn, off, [firing("p1", "api_calls", NOV + i * H, [e]) for i, e in enumerate(evs)], "prov")
        q, amount, n, n_open = provisional(conn, "p1")
        assert n_open == 0 and amount == charged(conn, "p1") == Decimal("112.0")
        # a max meter: the peak window
        apply(conn, off, [*fire("p1", "active_seats", NOV, "3", "7"), ev("p1", "active_seats", NOV + H, "9")], "prov")
        q, amount, n, n_open = provisional(conn, "p1", "active_seats")
        assert (q, amount, n_open) == (Decimal(9), Decimal(45), 1)
        mism, still_open = check_provisional(conn, NOV)
        assert mism == [] and still_open == 1


def test_a_crossing_exactly_at_the_threshold_and_several_levels_by_one_event(settings) -> None:
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        c = customer(conn)
        rules(conn, {"rule_id": "calls", "kind": "usage", "meter": "api_calls", "customer_id": c,
                     "levels": {"info": "10", "warning": "20", "critical": "30"}})
        apply(conn, off, [ev(c, "api_calls", NOV, "4")], c)
        assert alerts(conn, c) == []
        apply(conn, off, [ev(c, "api_calls", NOV, "6")], c)  # exactly 10
        assert alerts(conn, c) == [("calls", "info", "firing", 1, Decimal(10))]
        b = off.batch([ev(c, "api_calls", NOV + H, "25")])  # 35: warning and critical at once
        apply_batch(conn, b, consumer=c, books=PriceBooks(), aggregations=AGG)
        got = alerts(conn, c)
        assert sorted(got[1:]) == [("calls", "critical", "firing", 1, Decimal(35)),
                                   ("calls", "warning", "firing", 1, Decimal(35))]
        with pytest.raises(StaleBatchError):  # the same batch again (a replay): refused
            apply_batch(conn, b, consumer=c, books=PriceBooks(), aggregations=AGG)
        apply(conn, off, [ev(c, "api_calls", NOV + H, "5")], c)  # further up: no level left
        assert len(alerts(conn, c)) == 3
        outbox = conn.execute("SELECT count(*) FROM alert_outbox o JOIN alerts a USING (alert_id) "
                              "WHERE a.customer_id = %s AND o.published_at IS NULL", (c,)).fetchone()[0]
        assert outbox == 3


def test_a_late_event_within_lateness_alone_makes_the_crossing(settings) -> None:
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        c = customer(conn)
        rules(conn, {"rule_id": "spend", "kind": "spend", "customer_id": c, "levels": {"warning": "10"}})
        apply(conn, off, fire(c, "api_calls", NOV, "60", "30"), c)  # 9.0 USD, fired
        assert alerts(conn, c) == []
        apply(conn, off, [late(c, "api_calls", NOV, "10")], c)  # 10.0: a late revision
        assert alerts(conn, c) == [("spend", "warning", "firing", 1, Decimal("10.0"))]
        assert provisional(conn, c)[1] == charged(conn, c) == Decimal("10.0")


def test_a_late_event_beyond_lateness_makes_the_crossing_through_the_rerating_job(settings) -> None:
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        c = customer(conn)
        rules(conn, {"rule_id": "calls", "kind": "usage", "meter": "api_calls", "customer_id": c,
                     "levels": {"critical": "100"}})
        apply(conn, off, fire(c, "api_calls", NOV, "99"), c)
        assert alerts(conn, c) == []
        apply_late_batch(conn, [ev(c, "api_calls", NOV, "1", late=True)], consumer="late-" + c,
                         books=PriceBooks(), aggregations=AGG, window_size=H)
        assert alerts(conn, c) == [("calls", "critical", "firing", 1, Decimal(100))]
        assert provisional(conn, c)[1] == charged(conn, c) == Decimal("10.0")


def test_a_price_change_inside_the_period_is_priced_per_window_start(settings) -> None:
    data = {"price_book_id": f"split-{next(_n)}", "currency": "USD", "versions": [
        {"name": "v1", "effective_from": "2026-01-01T00:00:00Z",
         "prices": [{"meter": "api_calls", "model": "flat", "unit_price": "0.10"}]},
        {"name": "v2", "effective_from": "2026-11-01T02:00:00Z",
         "prices": [{"meter": "api_calls", "model": "flat", "unit_price": "0.25"}]}]}
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        store_price_books(conn, [price_book_from_data(data)])
        c = customer(conn, data["price_book_id"])
        evs = [ev(c, "api_calls", NOV + i * H, "10") for i in range(4)]
        apply(conn, off, evs, c)
        assert provisional(conn, c)[1] == Decimal("7.0")  # 2 × 1.0 + 2 × 2.5, nothing fired
        apply(conn, off, [firing(c, "api_calls", e.window_start, [e]) for e in evs], c)
        assert provisional(conn, c)[1] == charged(conn, c) == Decimal("7.0")


def test_two_currencies(settings) -> None:
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        u = customer(conn)
        e = customer(conn, "flat-eur", "EUR")
        rules(conn, {"rule_id": "spend", "kind": "spend", "levels": {"info": "5"}},
              {"rule_id": "eur-only", "kind": "spend", "currency": "EUR", "levels": {"info": "1"}})
        conn.execute("INSERT INTO credits (credit_id, customer_id, currency, amount) VALUES "
                     "(%s, %s, 'USD', 100), (%s, %s, 'EUR', 40)", (f"{u}-usd", u, f"{u}-eur", u))
        conn.commit()
        apply(conn, off, [ev(u, "api_calls", NOV, "50"), ev(e, "api_calls", NOV, "10")], "cur")
        got = conn.execute("SELECT customer_id, rule_id, currency, value FROM alerts WHERE customer_id IN (%s, %s) "
                           "ORDER BY 1, 2", (u, e)).fetchall()
        assert set(got) == {(u, "spend", "USD", Decimal("5.0")), (e, "eur-only", "EUR", Decimal("5.0")),
                            (e, "spend", "EUR", Decimal("5.0"))}
        bal = {(b.customer_id, b.currency): b for b in balances(conn, [u, e])}
        assert bal[(u, "USD")].balance == Decimal("95.0")
        assert bal[(u, "EUR")].balance == Decimal(40)  # spend in USD does not touch the EUR credits
        assert bal[(e, "EUR")].balance == Decimal("-5.0")


def test_balance_alerts_recover_only_after_a_top_up_and_a_correction_never_alerts_twice(settings) -> None:
    data = {"price_book_id": f"cut-{next(_n)}", "currency": "USD", "versions": [
        {"name": "v1", "effective_from": "2026-01-01T00:00:00Z",
         "prices": [{"meter": "api_calls", "model": "flat", "unit_price": "0.10"}]}]}
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        store_price_books(conn, [price_book_from_data(data)])
        c = customer(conn, data["price_book_id"], credit_limit=Decimal(10))
        rules(conn, {"rule_id": "low", "kind": "balance", "customer_id": c, "levels": {"critical": "10"}},
              {"rule_id": "spend", "kind": "spend", "customer_id": c, "levels": {"info": "10"}},
              {"rule_id": "limit", "kind": "credit_limit", "customer_id": c,
               "levels": {"warning": "50", "critical": "100"}})
        conn.execute("INSERT INTO credits (credit_id, customer_id, currency, amount) VALUES (%s, %s, 'USD', 20)",
                     (f"{c}-1", c))
        conn.commit()
        apply(conn, off, fire(c, "api_calls", NOV + 3 * H, "120"), c)  # spend 12: balance 8
        assert sorted(alerts(conn, c)) == [("low", "critical", "firing", 1, Decimal("8.0")),
                                           ("spend", "info", "firing", 1, Decimal("12.0"))]
        # a correction lowers the spend: a cheaper version from 02:00, re-rated (balance 20 - 1.2)
        cheaper = {**data, "versions": [*data["versions"], {
            "name": "v2", "effective_from": "2026-11-01T02:00:00Z",
            "prices": [{"meter": "api_calls", "model": "flat", "unit_price": "0.01"}]}]}
        store_price_books(conn, [price_book_from_data(cheaper)])
        rerate_scope(conn, settings, customer=c,
                     meter=None, date_from=date(2026, 11, 1), date_to=date(2026, 11, 1), reason="price cut",
                     include_open=True)
        assert provisional(conn, c)[1] == charged(conn, c) == Decimal("1.20")
        assert len(alerts(conn, c)) == 2  # no ok: nothing was topped up
        apply(conn, off, fire(c, "api_calls", NOV + 4 * H, "1500"), c)  # spend 16.2, balance 3.8
        assert len(alerts(conn, c)) == 2  # the same crossings: no second alert
        conn.execute("INSERT INTO credits (credit_id, customer_id, currency, amount) VALUES (%s, %s, 'USD', 50)",
                     (f"{c}-2", c))
        with conn.transaction():
            evaluate_alerts(conn, [r for r in rules_from_data({"rules": [
                {"rule_id": "low", "kind": "balance", "customer_id": c, "levels": {"critical": "10"}}]})], [c])
        assert alerts(conn, c)[-1] == ("low", "critical", "ok", 1, Decimal("53.8"))
        apply(conn, off, fire(c, "api_calls", NOV + 5 * H, "4500"), c)  # spend 61.2: balance 8.8
        assert alerts(conn, c)[-1] == ("low", "critical", "firing", 2, Decimal("8.8"))
        apply(conn, off, fire(c, "api_calls", NOV + 6 * H, "1400"), c)  # balance -5.2: half the limit
        assert alerts(conn, c)[-1][:3] == ("limit", "warning", "firing")
        ids = conn.execute("SELECT alert_id FROM alerts WHERE customer_id = %s", (c,)).fetchall()
        assert len(ids) == len(set(ids)) == 5


def test_a_credit_grant_raises_the_recovery_at_once_in_its_own_transaction(settings) -> None:
    """`meterflow credits grant` is the top-up: the balance level's `ok` comes with it, without
    waiting for the customer's next usage to reach the ledger; a repeated grant raises nothing."""
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        c = customer(conn)
        rules(conn, {"rule_id": "low", "kind": "balance", "customer_id": c, "levels": {"warning": "5"}})
        grant_credit(conn, customer_id=c, amount="10", currency="USD", reference=f"{c}-start")
        apply(conn, off, fire(c, "api_calls", NOV + 3 * H, "80"), c)  # spend 8: balance 2
        assert alerts(conn, c) == [("low", "warning", "firing", 1, Decimal("2.0"))]
        res = grant_credit(conn, customer_id=c, amount="20", currency="USD", reference=f"{c}-topup")
        assert res.alerts == 1
        assert alerts(conn, c)[-1] == ("low", "warning", "ok", 1, Decimal("22.0"))
        again = grant_credit(conn, customer_id=c, amount="20", currency="USD", reference=f"{c}-topup")
        assert (again.created, again.alerts) == (False, 0) and len(alerts(conn, c)) == 2


def test_a_crash_before_commit_loses_no_alert_and_duplicates_none(settings) -> None:
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        c = customer(conn)
        rules(conn, {"rule_id": "calls", "kind": "usage", "meter": "api_calls", "customer_id": c,
                     "levels": {"info": "5", "critical": "8"}})
        b = off.batch([ev(c, "api_calls", NOV, "9")])

        class Crash(Exception):
            pass

        with pytest.raises(Crash), conn.transaction():  # the writer dies after the alerts, before commit
            apply_batch(conn, b, consumer=c, books=PriceBooks(), aggregations=AGG)
            assert len(alerts(conn, c)) == 2
            raise Crash
        assert alerts(conn, c) == []
        apply_batch(conn, b, consumer=c, books=PriceBooks(), aggregations=AGG)  # restarted: same batch
        assert len(alerts(conn, c)) == 2
        with pytest.raises(StaleBatchError):
            apply_batch(conn, b, consumer=c, books=PriceBooks(), aggregations=AGG)
        assert len(alerts(conn, c)) == 2


def test_the_publisher_delivers_every_alert_at_least_once_and_ids_dedup_a_resend(settings) -> None:
    from kafka import KafkaConsumer

    topic = f"alerts-test-{uuid.uuid4().hex[:8]}"
    producer = make_producer(settings.kafka.bootstrap_servers)
    with connect(settings, autocommit=True) as conn:
        class CrashAfterSend(Exception):
            pass

        class Flaky:
            """Sends, then the process dies before the outbox rows are marked."""

            def send(self, *a, **kw):
                return producer.send(*a, **kw)

            def flush(self):
                producer.flush()
                raise CrashAfterSend

        with pytest.raises(CrashAfterSend):
            publish_pending(conn, Flaky(), topic)
        n = 0
        while (k := publish_pending(conn, producer, topic)):
            n += k
        pending = conn.execute("SELECT count(*) FROM alert_outbox WHERE published_at IS NULL").fetchone()[0]
        total = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        assert pending == 0 and n == total > 0
    producer.close()
    kc = KafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest",
                       consumer_timeout_ms=5000, isolation_level="read_committed")
    records = [orjson.loads(m.value) for m in kc]
    kc.close()
    ids = [r["alert_id"] for r in records]
    assert len(ids) >= total and len(set(ids)) == total  # re-sent records carry the same id
    assert {"alert_id", "rule_id", "customer_id", "level", "status", "crossing", "value",
            "threshold"} <= set(records[0])


def test_reconcile_checks_provisional_spend_against_the_charges(settings) -> None:
    from jobs.batch.reconcile import run_reconcile

    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        c = customer(conn)
        apply(conn, off, fire(c, "api_calls", NOV, "70"), c)
        check = next(k for k in run_reconcile(conn, settings, "2026-11", use_kafka=False, record=False).checks
                     if k.name.startswith("h."))
        assert check.status == "ok", check
        conn.execute("UPDATE provisional_spend SET amount = amount + 0.000001 WHERE customer_id = %s", (c,))
        check = next(k for k in run_reconcile(conn, settings, "2026-11", use_kafka=False, record=False).checks
                     if k.name.startswith("h."))
        assert check.status == "mismatch" and [(m.customer_id, m.actual) for m in check.mismatches] == [
            (c, "7.000001")], check
