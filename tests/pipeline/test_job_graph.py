"""The shape of the metering job's graph, where a shape is a correctness property.

One Kafka source, not one per validation branch. Two KafkaSource operators on the same topic share
the consumer group: each commits its offsets there when a checkpoint completes. A split that a
source has not read from yet is checkpointed as "start at the group's committed offset", so after
a restore it starts wherever the OTHER source had got to, and the records in between never pass
this source's branch. The restart test (tests/integration/test_metering_restart.py) lost the
dead letters of the Python branch this way, about one run in ten; this test fails every time.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.pipeline

EVENTS_SCAN = "TableSourceScan(table=[[default_catalog, default_database, events_src"


def job_graph(parallelism: int) -> list[dict]:
    """The stream graph of the job `meterflow run metering` submits (Kafka source and sinks)."""
    import jobs.flink.metering as m
    from schemas.config import load_settings

    t_env, outputs, sinks = m.build_job(load_settings(), bounded=True, parallelism=parallelism)
    ss = t_env.create_statement_set()
    for name in ("ledger", "late", "invalid", "duplicates"):
        ss.add_insert(sinks[name], getattr(outputs, name))
    ss.attach_as_datastream()  # the statement set's pipelines join the eagerly translated ones
    return json.loads(t_env._j_tenv.execEnv().getExecutionPlan())["nodes"]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_the_job_reads_the_events_topic_through_exactly_one_kafka_source(parallelism: int) -> None:
    scans = [n["contents"][:160] for n in job_graph(parallelism) if EVENTS_SCAN in n["contents"]]
    assert len(scans) == 1, scans


def create_statements(names: tuple[str, ...]) -> dict[str, str]:
    import jobs.flink.metering as m
    from schemas.config import load_settings

    t_env, _, sinks = m.build_job(load_settings(), bounded=True)
    out = {}
    for name in names:
        with t_env.execute_sql(f"SHOW CREATE TABLE {name}").collect() as rows:
            out[name] = next(iter(rows))[0]
    return out


def test_the_kafka_sinks_batch_their_records_and_the_source_gets_no_producer_properties() -> None:
    # kafka.sink_properties (defaults: linger.ms 50, batch.size 1 MiB) halve the broker's CPU per record
    ddl = create_statements(("ledger_sink", "late_sink", "dlq_sink", "dup_sink", "events_src"))
    for sink in ("ledger_sink", "late_sink", "dlq_sink", "dup_sink"):
        assert "'properties.linger.ms' = '50'" in ddl[sink], sink
        assert "'properties.batch.size' = '1048576'" in ddl[sink], sink
    assert "linger.ms" not in ddl["events_src"] and "batch.size" not in ddl["events_src"]
