"""Differential test on the real stack: meterflow's fast metering job (Kafka → Flink SQL → ledger →
Postgres) against the plain DataStream reference (window + allowed_lateness +
side_output_late_data), in ONE Flink job reading the same Kafka topic.

The topic has one partition and watermarks are emitted after every event (`watermark_emit =
on-event`), so both pipelines see the same watermark at every event and must classify every
event identically: identical final per-window quantities, identical accepted, duplicate,
rejected and late counts.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from jobs.flink.env import table_environment
from jobs.flink.metering import build_metering, create_kafka_sinks, create_kafka_source
from jobs.flink.reference import build_reference
from jobs.flink.run import run_ledger_writer
from jobs.tools.produce import send
from jobs.tools.synthetic import SyntheticSpec, generate
from sinks.db import connect
from tests.integration.metering_util import load_prices, private_metering_settings, read_topic
from tests.pipeline.harness import Results, _read, _sink

pytestmark = pytest.mark.integration

CUSTOMERS = [f"cust-{i:05d}" for i in range(8)]


def test_the_fast_job_and_the_datastream_reference_agree_on_every_window_and_count(tmp_path) -> None:
    with private_metering_settings(
        partitions=1, window_size="1h", allowed_lateness="10m", max_out_of_orderness="2s",
        idleness_timeout="30s", watermark_emit="on-event",
    ) as settings:
        load_prices(settings, CUSTOMERS)
        spec = SyntheticSpec(
            count=2500, seed=23, customers=len(CUSTOMERS), meters=("api_calls", "seats"),
            start=datetime(2026, 11, 2, tzinfo=UTC), span=timedelta(hours=10),
            out_of_order_share=0.3, max_disorder=timedelta(minutes=75),  # many late within 10 min
            days_late_share=0.02, duplicate_share=0.04, invalid_share=0.03,
        )
        records = list(generate(spec))
        send(settings, records, progress=False)

        s = settings.model_copy(update={"flink": settings.flink.model_copy(update={
            "checkpoint_interval": timedelta(seconds=1), "checkpoint_dir": str(tmp_path / "chk")})})
        t_env = table_environment(s, job_name="meterflow-differential", parallelism=1)
        src = create_kafka_source(t_env, s, bounded=True)
        fast = build_metering(t_env, src, s)
        sinks = create_kafka_sinks(t_env, s)
        ref = build_reference(t_env, src, s)
        ss = t_env.create_statement_set()
        ss.add_insert(sinks["ledger"], fast.ledger)
        ss.add_insert(sinks["late"], fast.late)
        ss.add_insert(sinks["invalid"], fast.invalid)
        ss.add_insert(sinks["duplicates"], fast.duplicates)
        out = tmp_path / "ref"
        validated_cols = [("ok", "BOOLEAN"), ("reason", "STRING"), ("event_id", "STRING"), ("customer_id", "STRING"),
                          ("meter", "STRING"), ("event_time_ms", "BIGINT"), ("quantity", "STRING")]
        ss.add_insert(_sink(t_env, "r_windows", [
            ("customer_id", "STRING"), ("meter", "STRING"), ("window_start_ms", "BIGINT"), ("window_end_ms", "BIGINT"),
            ("qsum", "STRING"), ("qcount", "BIGINT"), ("qmax", "STRING"), ("firing", "INT")], out / "windows"),
            t_env.from_data_stream(ref.windows))
        ss.add_insert(_sink(t_env, "r_late", validated_cols, out / "late"), t_env.from_data_stream(ref.late))
        ss.add_insert(_sink(t_env, "r_invalid", validated_cols, out / "invalid"), t_env.from_data_stream(ref.invalid))
        from pyflink.common import Row, Types

        dup_rows = ref.duplicates.map(lambda e: Row(event_id=e),
                                      output_type=Types.ROW_NAMED(["event_id"], [Types.STRING()]))
        ss.add_insert(_sink(t_env, "r_dups", [("event_id", "STRING")], out / "dups"), t_env.from_data_stream(dup_rows))
        ss.execute().wait()
        run_ledger_writer(settings, bounded=True)

        ref_res = Results(ref_windows=_read(out / "windows"), ref_late=_read(out / "late"),
                          ref_invalid=_read(out / "invalid"), ref_duplicates=_read(out / "dups"))
        aggs = settings.meter_aggregations
        with connect(settings) as conn:
            ours = {
                (c, m, int(ws.timestamp() * 1000)): (q, n)
                for c, m, ws, q, n in conn.execute(
                    """SELECT DISTINCT ON (customer_id, meter, window_start)
                              customer_id, meter, window_start, quantity, event_count
                         FROM aggregated_usage ORDER BY customer_id, meter, window_start, revision DESC""")
            }
            accepted = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
            duplicates = conn.execute("SELECT coalesce(sum(duplicates), 0) FROM duplicate_counts").fetchone()[0]
            late_revisions = conn.execute(
                "SELECT count(*) FROM aggregated_usage WHERE source = 'late_revision'").fetchone()[0]
        theirs = {
            k: ((v[2] if aggs[k[1]] == "max" else v[0]), v[1]) for k, v in ref_res.ref_final_windows().items()
        }
        late = read_topic(settings, settings.topics.late)
        dlq = read_topic(settings, settings.topics.dlq)

        assert late_revisions > 0 and late, "the input must exercise both late paths"
        assert ours == theirs
        assert accepted == sum(n for _, n in theirs.values())
        assert {r["event_id"] for r in late} == {r["event_id"] for r in ref_res.ref_late}
        assert duplicates == len(ref_res.ref_duplicates) == Counter(r.kind for r in records)["duplicate"]
        assert sorted(d["reason"] for d in dlq) == sorted(r["reason"] for r in ref_res.ref_invalid)
        assert sum(Decimal(v[0]) for v in ours.values()) > 0
