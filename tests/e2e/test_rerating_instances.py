"""Two re-rating consumers at once. Re-rating runs on the one batching loop (sinks/batchloop.py),
like the ledger writer: Postgres holds the offsets and refuses a stale batch, and the loop then
re-seeks to Postgres's offsets instead of dying. So two instances that both read every partition
(bounded) take turns and fold every late event in once, and two instances in one Kafka consumer
group split the partitions between them (scale-out)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from decimal import Decimal

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from jobs.consumers.rerating import RERATING_CONSUMER, run_rerating
from sinks.batchloop import Status
from sinks.db import connect
from tests.e2e.test_rerating_support import (
    H,
    assert_sigma_equals_rate,
    final_windows,
    late_record,
    utc,
)
from tests.integration.metering_util import load_prices, private_metering_settings

pytestmark = pytest.mark.integration

NOV = utc(2026, 11, 1)
CUSTOMERS = ("cust-a", "cust-b")


def produce_late(settings, n_per_customer: int) -> dict[tuple, Decimal]:
    """Late records spread over both partitions (cust-a to partition 0, cust-b to 1); returns the
    expected final quantity per (customer, meter, window)."""
    expected: dict[tuple, Decimal] = defaultdict(Decimal)
    p = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=5)
    try:
        for part, c in enumerate(CUSTOMERS):
            for i in range(n_per_customer):
                ws = NOV + (i % 40) * H
                q = 1 + i % 7
                p.send(
                    settings.topics.late,
                    partition=part,
                    value=late_record(
                        f"late-{c}-{i}", c, "api_calls", ws + 60 * (i % 50) * H / 3600, str(q)
                    ),
                )
                expected[(c, "api_calls", ws)] += q
        p.flush()
    finally:
        p.close()
    return expected


def assert_folded_in_once(settings, expected: dict[tuple, Decimal], n_events: int) -> None:
    got = {
        (c, m, ws): q
        for (c, m, _), ws_q in final_windows(settings).items()
        for ws, q in ws_q.items()
    }
    assert got == dict(expected)
    with connect(settings) as conn:
        assert (
            conn.execute("SELECT count(*) FROM usage_events WHERE source = 'late'").fetchone()[0]
            == n_events
        )
        assert (
            conn.execute("SELECT coalesce(sum(duplicates), 0) FROM duplicate_counts").fetchone()[0]
            == 0
        )
    assert_sigma_equals_rate(settings)


def run_two(target_a, target_b) -> None:
    errors: list[BaseException] = []

    def guarded(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in (target_a, target_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "an instance did not finish"
    assert not errors, errors


def test_two_instances_reading_every_partition_take_turns_and_fold_each_late_event_in_once() -> (
    None
):
    # before the one loop, the second instance to apply a batch died with StaleBatchError
    with private_metering_settings(partitions=2) as settings:
        load_prices(settings, CUSTOMERS)
        expected = produce_late(settings, 150)
        start = threading.Barrier(2)

        def instance() -> None:
            start.wait()
            run_rerating(settings, bounded=True, max_batch=5, linger_s=0.0)

        run_two(instance, instance)
        assert_folded_in_once(settings, expected, 300)


def _stored_offsets(settings) -> dict[int, int]:
    with connect(settings) as conn:
        return {
            p: o
            for p, o in conn.execute(
                "SELECT partition, next_offset FROM ledger_offsets"
                " WHERE consumer = %s AND topic = %s",
                (RERATING_CONSUMER, settings.topics.late),
            )
        }


def _end_offsets(settings) -> dict[int, int]:
    kc = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, isolation_level="read_committed"
    )
    try:
        tps = [TopicPartition(settings.topics.late, p) for p in (0, 1)]
        return {tp.partition: o for tp, o in kc.end_offsets(tps).items()}
    finally:
        kc.close()


def _wait_for(condition, what: str, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.2)


def test_two_instances_in_one_consumer_group_split_the_partitions_and_each_folds_its_own() -> None:
    with private_metering_settings(partitions=2) as settings:
        load_prices(settings, CUSTOMERS)
        done = threading.Event()
        statuses = [Status(None), Status(None)]

        def instance(k: int):
            def run() -> None:
                run_rerating(
                    settings,
                    bounded=False,
                    max_batch=5,
                    linger_s=0.0,
                    stop=done.is_set,
                    group_id=f"{settings.kafka.consumer_group}-rerating",
                    status=statuses[k],
                )

            return run

        failure: list[BaseException] = []

        def run_and_keep() -> None:
            try:
                run_two(instance(0), instance(1))
            except BaseException as e:  # noqa: BLE001
                failure.append(e)

        runner = threading.Thread(target=run_and_keep)
        runner.start()
        try:
            # both joined the group and own one partition each before anything is produced
            _wait_for(
                lambda: (
                    all(len(s.partitions) == 1 for s in statuses)
                    and {p for s in statuses for p in s.partitions}
                    == {f"{settings.topics.late}[0]", f"{settings.topics.late}[1]"}
                ),
                "both instances own one partition",
            )
            expected = produce_late(settings, 60)
            end = _end_offsets(settings)
            _wait_for(
                lambda: _stored_offsets(settings) == end or bool(failure),
                "the offsets reach the end",
            )
        finally:
            done.set()
            runner.join(timeout=120)
        assert not failure, failure
        assert all(s.batches_total > 0 for s in statuses), [s.batches_total for s in statuses]
        assert all(s.stale_batches_total == 0 for s in statuses)
        assert_folded_in_once(settings, expected, 120)
