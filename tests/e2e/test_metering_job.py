"""The metering job end to end on the real stack: Kafka → Flink (mini-cluster) → ledger → Postgres.

One synthetic input with every kind of event (on time, slightly out of order, days late,
duplicates, invalid) is produced to a private topic; the job runs bounded; then conservation
(invariant 1), window integrity and Σ charges = Rate (invariant 2) are checked against Postgres
and the DLQ / late topics.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from jobs.flink.run import run_metering
from jobs.tools.produce import send
from jobs.tools.synthetic import SyntheticSpec, generate
from pricing.book import load_price_book
from pricing.periods import period_start
from pricing.rater import rate_period
from sinks.db import connect
from tests.integration.metering_util import (
    PRICE_BOOK,
    load_prices,
    private_metering_settings,
    read_topic,
)

pytestmark = pytest.mark.integration

CUSTOMERS = [f"cust-{i:05d}" for i in range(12)]


@pytest.fixture(scope="module")
def metered():
    """Produce once, run the job once (bounded); the tests below read the results."""
    # idleness: long enough that no partition is declared idle while the job is still starting
    # (an idle partition's first events would then be late: see docs/ARCHITECTURE.md)
    # watermarks after every event: with periodic ones a fast run may read the whole input
    # before the first watermark, and then nothing is late (Flink's semantics, but no test)
    with private_metering_settings(partitions=4, allowed_lateness="1h", max_out_of_orderness="5s",
                                   idleness_timeout="30s", watermark_emit="on-event") as settings:
        load_prices(settings, CUSTOMERS)
        spec = SyntheticSpec(
            count=3000, seed=11, customers=len(CUSTOMERS), meters=("api_calls", "storage_gb_hours", "seats"),
            start=datetime(2026, 10, 31, 18, tzinfo=UTC), span=timedelta(hours=12),
            out_of_order_share=0.05, days_late_share=0.02, duplicate_share=0.03, invalid_share=0.05,
        )
        records = list(generate(spec))
        sent = send(settings, records, progress=False)
        run = run_metering(settings, bounded=True)
        yield settings, records, sent, run


def test_every_input_event_is_accepted_late_duplicate_or_rejected_exactly_once(metered) -> None:
    settings, records, sent, run = metered
    kinds = Counter(r.kind for r in records)
    dlq = read_topic(settings, settings.topics.dlq)
    late = read_topic(settings, settings.topics.late)
    with connect(settings) as conn:
        accepted = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
        duplicates = conn.execute("SELECT coalesce(sum(duplicates), 0) FROM duplicate_counts").fetchone()[0]
        ids = {r[0] for r in conn.execute("SELECT event_id FROM usage_events")}
    late_ids = {r["event_id"] for r in late}
    assert not ids & late_ids, "an event was both accepted and sent to the late topic"
    assert len(dlq) == kinds["invalid"]
    assert duplicates == kinds["duplicate"]
    assert accepted + len(late) == kinds["valid"] + kinds["days_late"]
    # input = accepted + late (folded in later by the re-rating job) + duplicates + rejected
    assert sum(kinds.values()) == accepted + len(late) + duplicates + len(dlq)


def test_every_dead_letter_carries_its_reason_and_original_bytes(metered) -> None:
    import base64

    settings, records, *_ = metered
    expected = Counter(r.expected_reason for r in records if r.kind == "invalid")
    dlq = read_topic(settings, settings.topics.dlq)
    assert Counter(d["reason"] for d in dlq) == expected
    originals = {r.value for r in records if r.kind == "invalid"}
    # the text when it is UTF-8 (and fits), else the bytes in base64
    assert {d["payload"].encode() if d["payload"] is not None else base64.b64decode(d["payload_b64"])
            for d in dlq} == originals
    assert all(d["src_topic"] == settings.topics.events and d["src_offset"] is not None for d in dlq)


def test_days_late_events_go_to_the_late_topic_with_their_window_and_watermark(metered) -> None:
    settings, records, *_ = metered
    late = read_topic(settings, settings.topics.late)
    assert late, "the input has events days late: some must be beyond allowed lateness"
    days_late_ids = {r.value for r in records if r.kind == "days_late"}
    for ev in late:
        assert ev["payload"].encode() in days_late_ids
        assert ev["window_end_ms"] - ev["window_start_ms"] == 3_600_000
        wm = datetime.fromisoformat(ev["watermark"]).replace(tzinfo=UTC)
        # beyond lateness: window end - 1 ms + allowed lateness <= watermark at routing
        assert ev["window_end_ms"] - 1 + 3_600_000 <= wm.timestamp() * 1000


def test_each_window_holds_exactly_its_accepted_events(metered) -> None:
    settings, *_ = metered
    aggs = settings.meter_aggregations
    with connect(settings) as conn:
        windows = {
            (c, m, ws): (q, n)
            for c, m, ws, q, n in conn.execute(
                """SELECT DISTINCT ON (customer_id, meter, window_start)
                          customer_id, meter, window_start, quantity, event_count
                     FROM aggregated_usage ORDER BY customer_id, meter, window_start, revision DESC""")
        }
        events: dict[tuple, list[Decimal]] = defaultdict(list)
        for c, m, ws, q in conn.execute("SELECT customer_id, meter, window_start, quantity FROM usage_events"):
            events[(c, m, ws)].append(q)
    assert set(windows) == set(events)
    for key, qs in events.items():
        agg = aggs[key[1]]
        expected = max(qs) if agg == "max" else (Decimal(len(qs)) if agg == "count" else sum(qs))
        assert windows[key] == (expected, len(qs)), key


def test_sigma_charges_per_customer_meter_period_equals_rate_of_the_final_windows(metered) -> None:
    settings, *_ = metered
    book = load_price_book(PRICE_BOOK)
    aggs = settings.meter_aggregations
    with connect(settings) as conn:
        finals: dict[tuple, dict[datetime, Decimal]] = defaultdict(dict)
        for c, m, ws, q in conn.execute(
            """SELECT DISTINCT ON (customer_id, meter, window_start) customer_id, meter, window_start, quantity
                 FROM aggregated_usage ORDER BY customer_id, meter, window_start, revision DESC"""):
            finals[(c, m, period_start(ws))][ws] = q
        charged = {(c, m, p): s for c, m, p, s in conn.execute(
            "SELECT customer_id, meter, period_start, sum(amount) FROM rated_charges GROUP BY 1, 2, 3")}
        errors = conn.execute("SELECT count(*) FROM rating_errors").fetchone()[0]
    assert errors == 0
    assert len(finals) > 20  # 12 customers x 3 meters x 2 periods (the input spans a month end)
    assert {p for _, _, p in finals} == {datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)}
    for (c, m, p), windows in finals.items():
        expected = rate_period(book, m, windows, aggregation=aggs[m], customer_id=c)
        assert charged.get((c, m, p), Decimal(0)) == expected, (c, m, p)


def test_a_second_bounded_run_with_no_new_input_changes_nothing(metered) -> None:
    settings, *_ = metered

    def snapshot():
        with connect(settings) as conn:
            digest = "count(*), md5(string_agg(t::text, ',' ORDER BY t::text))"
            return [conn.execute(f"SELECT {digest} FROM {t} t").fetchone()
                    for t in ("usage_events", "aggregated_usage", "rated_charges")]

    before = snapshot()
    run_metering(settings, bounded=True)
    assert snapshot() == before


def test_the_ledger_topic_keeps_every_customer_in_one_partition(metered) -> None:
    """The ledger writers scale out by partitions (docs/OPERATIONS.md, "Ledger writers"): the
    job keys the ledger topic by customer_id and leaves partitioning to Kafka's default (key
    hash), so a (customer, meter)'s events and window firings are applied by one writer, in order."""
    import json

    from kafka import KafkaConsumer, TopicPartition

    settings = metered[0]
    topic = settings.topics.ledger
    kc = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None,
                       enable_auto_commit=False, isolation_level="read_committed")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(kc.partitions_for_topic(topic))]
        kc.assign(tps)
        kc.seek_to_beginning(*tps)
        end = kc.end_offsets(tps)
        partitions: dict[str, set[int]] = defaultdict(set)
        while any(kc.position(tp) < end[tp] for tp in tps):
            for tp, msgs in kc.poll(timeout_ms=1000).items():
                for m in msgs:
                    assert m.key == json.loads(m.value)["customer_id"].encode()
                    partitions[m.key.decode()].add(tp.partition)
    finally:
        kc.close()
    assert len(tps) == 4 and len(partitions) > 4
    assert {c: len(ps) for c, ps in partitions.items()} == {c: 1 for c in partitions}
    assert len({p for ps in partitions.values() for p in ps}) > 1  # spread over partitions
