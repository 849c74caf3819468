"""Flink metrics of the metering job that the JVM operators do not give by name.

Each is a tiny Python identity map placed on a RARE branch (late events), so it costs nothing on
the hot path: it passes its rows on unchanged and counts them. They are DataStream functions
(``to_data_stream`` → map → ``from_data_stream``) because PyFlink's thread mode drops the metrics
of Table API Python UDFs. The validation function (operators/validate.py) counts valid and
rejected-by-reason events and keeps the watermark-lag gauge. Duplicates are the ``Deduplicate``
operator's ``numRecordsIn − numRecordsOut`` (Flink's own metrics; tests/integration/
test_metering_metrics.py reads them all from the REST API). All of ours live under the metric
group ``meterflow``:

=============================  ======================================================
``events_valid``               events that passed the contract (before dedup)
``reason.<code>.events_rejected``  dead-lettered events, by reason code
``events_late_within``         late events within allowed lateness (window revisions)
``events_late_beyond``         events beyond allowed lateness (to usage-events-late)
``watermark_lag_ms``           processing time minus the source watermark, last event
=============================  ======================================================
"""

from __future__ import annotations

from pyflink.datastream.functions import MapFunction, RuntimeContext
from pyflink.table import StreamTableEnvironment, Table


class CountThrough(MapFunction):
    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._counter = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self._counter = runtime_context.get_metrics_group().add_group("meterflow").counter(self.metric)

    def map(self, value):  # noqa: ANN001, ANN201
        if self._counter is not None:
            self._counter.inc()
        return value


def counted(t_env: StreamTableEnvironment, table: Table, metric: str) -> Table:
    """``table`` unchanged, its rows counted in counter ``meterflow.<metric>``."""
    ds = t_env.to_data_stream(table)
    return t_env.from_data_stream(ds.map(CountThrough(metric), output_type=ds.get_type()))
