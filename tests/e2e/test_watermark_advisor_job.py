"""The watermark advisor's prediction against the REAL metering job: the same input (one
partition, out-of-order, days-late, duplicate and invalid records) through the job with two
different ``[time]`` settings, on-event watermarks so that the job's verdicts are deterministic;
the advisor, reading the same events topic, must predict exactly which events the job sends on
time, as late revisions and beyond allowed lateness (and so exactly how many)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from jobs.batch.watermark_advisor.sim import Candidate, Semantics, simulate
from jobs.batch.watermark_advisor.sources import from_kafka_with_ids
from jobs.flink.env import table_environment
from jobs.flink.metering import build_metering, create_kafka_sinks, create_kafka_source
from jobs.tools.produce import send
from jobs.tools.synthetic import SyntheticRecord, SyntheticSpec, generate
from schemas.config import Settings, parse_duration
from tests.integration.metering_util import private_metering_settings, read_topic

pytestmark = pytest.mark.integration

SPEC = SyntheticSpec(
    count=2000, seed=31, customers=6, meters=("api_calls", "seats"),
    start=datetime(2026, 11, 3, tzinfo=UTC), span=timedelta(hours=8),
    out_of_order_share=0.35, max_disorder=timedelta(minutes=80),
    days_late_share=0.02, duplicate_share=0.04, invalid_share=0.03,
)


def _probes(time: dict[str, str]) -> list[SyntheticRecord]:
    """Events on the classification's edges, after the synthetic traffic: the watermark lands
    exactly on a window's last millisecond (``end - 1 <= wm``: late, not on time), then exactly
    on its last millisecond plus allowed lateness (beyond, not a revision). An off-by-one (a
    ``- 1 ms`` watermark, ``<`` for ``<=``) changes their verdicts."""
    bound, lat, w = (parse_duration(time[k]) for k in ("max_out_of_orderness", "allowed_lateness", "window_size"))
    ms = timedelta(milliseconds=1)
    t1 = datetime(2026, 11, 3, 12, tzinfo=UTC)  # a window end
    t2 = t1 + w * (2 + -(-lat // w))  # a later window end, more than allowed lateness later
    times = [t1 + bound - ms, t1 - ms, t1 - w, t1, t2 + lat + bound - ms, t2 - ms, t2 - w]
    out = []
    for i, t in enumerate(times):
        doc = {"event_id": f"probe-{i}", "event_time": t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "customer_id": "cust-00001", "meter": "api_calls", "quantity": 1}
        out.append(SyntheticRecord(b"cust-00001", json.dumps(doc).encode(), int(t.timestamp() * 1000), "valid"))
    return out


def _ms(td: timedelta) -> int:
    return int(td / timedelta(milliseconds=1))


def _run_job(settings: Settings, tmp_path, parallelism: int) -> dict[str, str]:
    """Run the job (bounded) and return event_id -> on_time | late | beyond."""
    s = settings.model_copy(update={"flink": settings.flink.model_copy(update={
        "checkpoint_interval": timedelta(seconds=1), "checkpoint_dir": str(tmp_path / "chk")})})
    t_env = table_environment(s, job_name="meterflow-advisor-check", parallelism=parallelism)
    src = create_kafka_source(t_env, s, bounded=True)
    out = build_metering(t_env, src, s)
    sinks = create_kafka_sinks(t_env, s)
    ss = t_env.create_statement_set()
    ss.add_insert(sinks["ledger"], out.ledger)
    ss.add_insert(sinks["late"], out.late)
    ss.execute().wait()
    verdicts = {r["event_id"]: r["lateness"] for r in read_topic(s, s.topics.ledger) if r["kind"] == "event"}
    for r in read_topic(s, s.topics.late):
        assert r["event_id"] not in verdicts
        verdicts[r["event_id"]] = "beyond"
    return verdicts


def _predicted(settings: Settings, parallelism: int) -> dict[str, str]:
    t = settings.time
    arr, ids = from_kafka_with_ids(settings)
    sem = Semantics(watermark_emit=t.watermark_emit, watermark_interval_ms=_ms(t.watermark_interval),
                    max_future_skew_ms=_ms(t.max_future_skew), dedup_horizon_ms=_ms(t.dedup_horizon),
                    parallelism=parallelism, topic=settings.topics.events)
    [o] = simulate(arr, [Candidate(_ms(t.max_out_of_orderness), _ms(t.idleness_timeout),
                                   _ms(t.allowed_lateness), _ms(t.window_size))], sem, verdicts=True)
    names = {0: "on_time", 1: "late", 2: "beyond"}
    return {ids[i]: names[int(v)] for i, v in enumerate(o.verdicts) if v >= 0}


@pytest.mark.parametrize("time, partitions", [
    ({"window_size": "1h", "max_out_of_orderness": "2s", "allowed_lateness": "10m"}, 1),
    ({"window_size": "15m", "max_out_of_orderness": "20m", "allowed_lateness": "30m"}, 1),
    # two readers, one partition each: every reader classifies against its own partition's
    # watermark, not the minimum over both (deterministic: each reader has one split)
    ({"window_size": "1h", "max_out_of_orderness": "2s", "allowed_lateness": "10m"}, 2),
], ids=["tight", "loose", "two-readers"])
def test_the_advisor_predicts_the_jobs_verdict_for_every_event(time: dict[str, str], partitions: int,
                                                                tmp_path) -> None:
    records = list(generate(SPEC)) + _probes(time)
    with private_metering_settings(partitions=partitions, idleness_timeout="30s", watermark_emit="on-event",
                                   **time) as settings:
        send(settings, records, progress=False)
        predicted = _predicted(settings, parallelism=partitions)
        naive = _predicted(settings, parallelism=1) if partitions > 1 else None
        job = _run_job(settings, tmp_path, parallelism=partitions)
    counts = Counter(job.values())
    assert counts["late"] > 20 and counts["beyond"] > 20 and counts["on_time"] > 1000, counts
    assert Counter(predicted.values()) == counts
    assert predicted == job
    # one watermark over both partitions (a single reader) would get some of them wrong
    assert naive is None or naive != job
    # the edges: probe-1, -2 land on the watermark (late), probe-3 just after it (on time);
    # probe-5, -6 are beyond lateness by equality
    assert [job[f"probe-{i}"] for i in range(7)] == ["on_time", "late", "late", "on_time", "on_time",
                                                     "beyond", "beyond"]
