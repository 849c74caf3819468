"""The re-rating job's streaming mode on the real stack: late-topic records → usage_events (source
'late'), one revision per window per batch (source 'late'), delta charges (cause 'late_event'),
duplicates counted, invalid records dead-lettered, offsets stored with the rows; and a crash in
the middle of a batch loses and doubles nothing."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

import pytest

from jobs.consumers.rerating import RERATING_CONSUMER, run_rerating
from schemas.records import LedgerEvent, WindowChange
from sinks.db import connect
from sinks.ledger import Batch, apply_batch
from sinks.pricebook_store import PriceBooks
from tests.e2e.test_rerating_support import (
    H,
    assert_sigma_equals_rate,
    final_windows,
    late_record,
    produce,
    snapshot,
    utc,
)
from tests.integration.metering_util import load_prices, private_metering_settings, read_topic

pytestmark = pytest.mark.integration

W1 = utc(2026, 11, 3, 10)  # a window that fired on time with 1,200 api calls
W2 = utc(2026, 11, 2, 7)  # a window that never fired (all its events are late)


def _fire_on_time(settings) -> None:
    """What the metering ledger wrote before the late events: W1's on-time events (known-1 among
    them) and its firings."""
    def ev(event_id: str, meter: str, q: int) -> LedgerEvent:
        return LedgerEvent(event_id, "cust-a", meter, W1, Decimal(q), None, W1, W1, "stream",
                             "usage-events", 0, None, "on_time", W1 + H)

    with connect(settings) as conn:
        apply_batch(conn, Batch(
            events=[ev("known-1", "api_calls", 500), ev("ot-2", "api_calls", 400), ev("ot-3", "api_calls", 300),
                    ev("ot-seat", "seats", 7)],
            windows=[WindowChange(1, "cust-a", "api_calls", W1, W1 + H, Decimal(1200), 3, Decimal(500)),
                     WindowChange(1, "cust-a", "seats", W1, W1 + H, Decimal(7), 1, Decimal(7))],
        ), consumer="metering-ledger", books=PriceBooks(), aggregations=settings.meter_aggregations)


def _late_input() -> list[bytes]:
    recs = [late_record(f"burst-{i:03d}", "cust-a", "api_calls", W1.replace(minute=i % 60), "2")
            for i in range(150)]  # a burst of 150 late events for one window: +300 calls
    recs += [late_record(f"w2-{i}", "cust-a", "api_calls", W2.replace(minute=i), "10") for i in range(5)]
    recs += [late_record("seat-late", "cust-a", "seats", W2, "12")]  # a new peak of seats
    recs += [late_record("known-1", "cust-a", "api_calls", W1, "500")]  # accepted already: duplicate
    recs += [late_record("burst-007", "cust-a", "api_calls", W1.replace(minute=7), "2")]  # twice late
    recs += [b"not json", late_record("bad-q", "cust-a", "api_calls", W1, "-3"),
             late_record("bad-meter", "cust-a", "nope", W1)]
    return recs


@pytest.fixture(scope="module")
def folded():
    with private_metering_settings(partitions=1) as settings:
        load_prices(settings, ["cust-a"])
        _fire_on_time(settings)
        produce(settings, settings.topics.late, _late_input(), key=b"cust-a")
        r = run_rerating(settings, bounded=True, linger_s=2.0)
        yield settings, r


def test_late_events_become_raw_events_with_source_late_and_known_ids_count_as_duplicates(folded) -> None:
    settings, r = folded
    with connect(settings) as conn:
        late = conn.execute("SELECT count(*) FROM usage_events WHERE source = 'late'").fetchone()[0]
        dups = dict(conn.execute("SELECT event_id, duplicates FROM duplicate_counts WHERE source = 'late'").fetchall())
    assert late == 150 + 5 + 1
    assert dups == {"known-1": 1, "burst-007": 1}
    assert (r.folded_in, r.duplicates, r.invalid) == (156, 2, 3)


def test_a_burst_of_late_events_for_one_window_gives_one_revision_with_source_late(folded) -> None:
    settings, r = folded
    with connect(settings) as conn:
        revs = conn.execute("""SELECT meter, window_start, revision, quantity, event_count, source
                                 FROM aggregated_usage ORDER BY 1, 2, 3""").fetchall()
    assert r.batches == 1
    assert revs == [
        ("api_calls", W2, 1, Decimal(50), 5, "late"),
        ("api_calls", W1, 1, Decimal(1200), 3, "window"),
        ("api_calls", W1, 2, Decimal(1500), 153, "late"),
        ("seats", W2, 1, Decimal(12), 1, "late"),
        ("seats", W1, 1, Decimal(7), 1, "window"),
    ]


def test_late_event_charges_carry_the_cause_and_sigma_equals_rate(folded) -> None:
    settings, _ = folded
    with connect(settings) as conn:
        rows = conn.execute("""SELECT meter, window_start, cause, caused_by, amount FROM rated_charges
                                WHERE cause = 'late_event' ORDER BY 1, 2""").fetchall()
    assert [(m, ws, c) for m, ws, c, _, _ in rows] == [
        ("api_calls", W2, "late_event"), ("api_calls", W1, "late_event"), ("seats", W2, "late_event")]
    # W2 (earlier in the month) shifts W1's tier position; November is priced by version
    # 2026-02-15, tiered [500 free, 500 @ 0.10, rest @ 0.07]:
    # before: 1200 calls = 50 + 700 x 0.07 = 99; after: 1550 calls = 50 + 1050 x 0.07 = 123.5
    assert sum(a for m, *_, a in rows if m == "api_calls") == Decimal("24.5")
    assert rows[2][3] == "seat-late"
    assert "150 late events" in rows[1][3] and "late-batch" in rows[1][3]
    assert_sigma_equals_rate(settings)


def test_invalid_late_records_go_to_the_dlq_with_their_reason_and_bytes(folded) -> None:
    settings, _ = folded
    dlq = read_topic(settings, settings.topics.dlq)
    assert Counter(d["reason"] for d in dlq) == {"invalid_json": 1, "negative_quantity": 1, "unknown_meter": 1}
    assert all(d["src_topic"] == settings.topics.late for d in dlq)
    assert {d["payload"] for d in dlq if d["reason"] == "invalid_json"} == {"not json"}


def test_offsets_are_stored_and_a_second_run_changes_nothing(folded) -> None:
    settings, _ = folded
    before = snapshot(settings)
    r = run_rerating(settings, bounded=True, linger_s=0.5)
    assert r.late_events == 0 and r.batches == 0
    assert snapshot(settings) == before
    with connect(settings) as conn:
        off = conn.execute("SELECT next_offset FROM ledger_offsets WHERE consumer = %s",
                           (RERATING_CONSUMER,)).fetchone()[0]
    assert off == len(_late_input())


def test_a_crash_inside_a_batch_then_a_restart_loses_and_doubles_nothing() -> None:
    """Small batches; the 3rd batch's transaction raises just before it commits; the restart
    continues from the stored offsets. The result equals an uninterrupted run on the same input."""
    results = []
    for crash in (False, True):
        with private_metering_settings(partitions=2) as settings:
            load_prices(settings, ["cust-a", "cust-b"])
            _fire_on_time(settings)
            recs = _late_input()
            recs += [late_record(f"b-{i}", "cust-b", "api_calls", W1.replace(minute=i % 60), "7")
                     for i in range(60)]
            produce(settings, settings.topics.late, recs[: len(recs) // 2], key=b"cust-a")
            produce(settings, settings.topics.late, recs[len(recs) // 2:], key=b"cust-b")
            if crash:
                def boom(n: int) -> None:
                    if n == 3:
                        raise RuntimeError("killed mid-batch")

                with pytest.raises(RuntimeError, match="killed mid-batch"):
                    run_rerating(settings, bounded=True, max_batch=20, linger_s=0.0, before_commit=boom)
                with connect(settings) as conn:  # two batches made it, the third did not
                    assert 0 < conn.execute("SELECT count(*) FROM usage_events WHERE source = 'late'"
                                            ).fetchone()[0] < 156 + 60
            r = run_rerating(settings, bounded=True, max_batch=20, linger_s=0.0)
            assert r.batches > 0
            assert_sigma_equals_rate(settings)
            with connect(settings) as conn:
                counts = conn.execute("""SELECT (SELECT count(*) FROM usage_events WHERE source = 'late'),
                                                (SELECT sum(duplicates) FROM duplicate_counts)""").fetchone()
            fw = {k: v for k, v in final_windows(settings).items()}
            dlq = sorted(json.dumps({k: d[k] for k in ("reason", "src_offset", "src_partition")})
                         for d in read_topic(settings, settings.topics.dlq))
            results.append((counts, fw, dlq))
    assert results[0][0] == (156 + 60, 2)
    assert results[1][:2] == results[0][:2]
    # the DLQ is at-least-once: the crashed batch's dead letters may be sent twice, never lost
    assert set(results[1][2]) == set(results[0][2])
