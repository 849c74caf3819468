"""No poison pills (issue 14): a ledger record the writer cannot apply — one that does not
parse, one Postgres rejects (a NUL character, which Postgres text cannot hold) — goes to
billing.ledger_dead_letters with its error, in the transaction that stores the offsets past it;
every other record of its batch is applied and the writer keeps going."""

from __future__ import annotations

from decimal import Decimal

import pytest

from jobs.flink.run import run_ledger_writer
from sinks.db import connect
from tests.e2e.test_rerating_support import assert_sigma_equals_rate, utc
from tests.integration.ledger_input import (
    H,
    event,
    firing,
    ledger_input,
    produce_keyed,
    stored_offsets,
)
from tests.integration.metering_util import load_prices, private_metering_settings

pytestmark = pytest.mark.integration

NOV = utc(2026, 11, 1)


def test_bad_records_are_dead_lettered_and_the_rest_of_the_batch_is_applied() -> None:
    with private_metering_settings(partitions=1) as settings:
        load_prices(settings, ["c1", "c2"])
        good = ledger_input(["c1", "c2"], NOV, windows=3, per_window=4, seed=3)
        ws = NOV + 5 * H
        bad = [
            # a NUL in customer_id: the event and its window's firing
            (b"c1", event("nul-1", "c\x00x", "api_calls", ws, 5)),
            (b"c1", firing("c\x00x", "api_calls", ws, [5])),
            # a NUL in properties (JSON text Postgres cannot read as jsonb)
            (b"c1", event("nul-2", "c1", "api_calls", ws, 7, properties='{"a":"x\\u0000y"}')),
            # not JSON at all; an event message cut short
            (b"c1", b"\xff not json"),
            (b"c1", b'{"kind":"event","customer_id":"c1","meter":'),
            # a window message with a quantity that is not a number
            (b"c1", firing("c1", "api_calls", ws, [1]).replace(b'"qsum":"1"', b'"qsum":"many"')),
        ]
        # the bad records amid the good ones, in one partition: one batch holds them all
        msgs = good[: len(good) // 2] + bad + good[len(good) // 2:]
        produce_keyed(settings, settings.topics.ledger, msgs)
        r = run_ledger_writer(settings, bounded=True)
        assert r.dead_letters == len(bad)

        with connect(settings) as conn:
            dead = conn.execute(
                """SELECT kafka_offset, stage, error, payload_bytes, length(payload)
                     FROM ledger_dead_letters ORDER BY kafka_offset""").fetchall()
            first = len(good) // 2
            assert [d[0] for d in dead] == list(range(first, first + len(bad)))
            assert [d[1] for d in dead] == ["apply", "apply", "apply", "parse", "apply", "parse"]
            assert all(d[2] and d[3] == d[4] for d in dead)
            # every good record is applied: all events, one window per (customer, meter, hour)
            good_events = {e for e in conn.execute(
                "SELECT event_id FROM usage_events").fetchall()}
            assert len(good_events) == 2 * 2 * 3 * 4 + sum(1 for _, v in good if b'"late"' in v)
            assert conn.execute("SELECT count(*) FROM usage_events WHERE event_id LIKE 'nul-%'").fetchone()[0] == 0
            windows = conn.execute("SELECT count(DISTINCT (customer_id, meter, window_start)) "
                                   "FROM aggregated_usage").fetchone()[0]
            assert windows == 2 * 2 * 3
        assert stored_offsets(settings) == {(settings.topics.ledger, 0): len(msgs)}
        assert_sigma_equals_rate(settings)

        # the writer keeps going: later records are applied, the dead letters stay as they are
        more = ledger_input(["c1"], NOV + 10 * H, windows=1, per_window=2, seed=4, tag="more-")
        # and the operator's repair: a corrected copy of a dead-lettered event, produced again
        more.append((b"c1", event("nul-2", "c1", "api_calls", ws, 7, properties='{"a":"xy"}',
                                   lateness="late")))
        produce_keyed(settings, settings.topics.ledger, more)
        r2 = run_ledger_writer(settings, bounded=True)
        assert r2.dead_letters == 0 and r2.events_inserted >= 4
        with connect(settings) as conn:
            assert conn.execute("SELECT count(*) FROM ledger_dead_letters").fetchone()[0] == len(bad)
            q = conn.execute("SELECT sum(quantity) FROM usage_events WHERE event_id LIKE 'more-%%'").fetchone()[0]
            assert q > Decimal(0)
            stored = conn.execute("SELECT quantity FROM usage_events WHERE event_id = 'nul-2'").fetchone()
            assert stored == (Decimal(7),)
        assert_sigma_equals_rate(settings)

        # reconcile counts them: the period's check f names the keys, and the unparseable ones
        from jobs.batch.reconcile import run_reconcile

        with connect(settings) as conn:
            rep = run_reconcile(conn, settings, "2026-11", use_kafka=False, record=False)
        f = next(c for c in rep.checks if c.name.startswith("f."))
        assert f.status == "mismatch" and not rep.ok
        got = {(m.customer_id, m.meter): m.actual for m in f.mismatches}
        # NUL customer's event and firing, the NUL-properties event, the bad window (quantity
        # "many"); the two records that do not parse are of unknown period
        assert got == {("c\x00x", "api_calls"): "2", ("c1", "api_calls"): "2", ("?", "?"): "2"}
        assert all(c.status != "mismatch" for c in rep.checks if not c.name.startswith("f."))


def test_a_window_whose_firing_counted_a_dead_lettered_event_is_rated_without_it() -> None:
    """The firing of a window counted an on-time event that Postgres rejects: the writer counts
    the dead-lettered message as read, so the window does not wait for it forever."""
    with private_metering_settings(partitions=1) as settings:
        load_prices(settings, ["c2"])
        ws = NOV + 7 * H
        msgs = [
            (b"c2", event("ok-1", "c2", "api_calls", ws, 3)),
            (b"c2", event("nul-3", "c2", "api_calls", ws, 7, properties='{"a":"x\\u0000y"}')),
            (b"c2", firing("c2", "api_calls", ws, [3, 7])),
        ]
        produce_keyed(settings, settings.topics.ledger, msgs)
        r = run_ledger_writer(settings, bounded=True)
        assert r.dead_letters == 1
        with connect(settings) as conn:
            assert conn.execute(
                """SELECT quantity, event_count FROM aggregated_usage WHERE customer_id = 'c2'
                    ORDER BY revision DESC LIMIT 1""").fetchone() == (Decimal(3), 1)
        assert_sigma_equals_rate(settings)
