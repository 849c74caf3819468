"""Flink metrics of the metering job that the JVM operators do not give by name.

Each is a tiny Python identity map placed on a RARE branch (dead letters, late events), so it
costs nothing on the hot path, which stays in the JVM: it passes its rows on unchanged and counts
them. They are DataStream functions (``to_data_stream`` → map → ``from_data_stream``) because
PyFlink's thread mode drops the metrics of Table API Python UDFs. What the JVM operators already
count is read from Flink's own metrics (tests/e2e/test_metering_metrics.py reads them all
from the REST API, as an operator's dashboard would):

=====================================  ==============================================================
accepted                               the ``Deduplicate`` operator's ``numRecordsIn``: every event
                                       that passed the contract (before dedup)
duplicates                             the ``Deduplicate`` operator's ``numRecordsIn − numRecordsOut``
``meterflow.reason.<code>.events_rejected``  dead-lettered events by reason code, counted on the
                                       dead-letter stream itself (the final verdict, whichever of the
                                       JVM fast path and the Python validator reached it)
``meterflow.events_late_within``       late events within allowed lateness (window revisions)
``meterflow.events_late_beyond``       events beyond allowed lateness (to usage-events-late)
watermark lag                          the Kafka source's ``watermarkLag`` gauge (processing time minus
                                       the source's current watermark)
=====================================  ==============================================================
"""

from __future__ import annotations

from pyflink.datastream.functions import MapFunction, RuntimeContext
from pyflink.table import StreamTableEnvironment, Table

from schemas.event import Reason


class CountThrough(MapFunction):
    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._counter = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self._counter = runtime_context.get_metrics_group().add_group("meterflow").counter(self.metric)

    def map(self, value):
        if self._counter is not None:
            self._counter.inc()
        return value


class CountByReason(MapFunction):
    """Counts rows by their ``reason`` field (index ``field``), one counter per reason code, every
    known code registered up front (a dashboard shows 0, not nothing)."""

    def __init__(self, field: int) -> None:
        self.field = field
        self._counters: dict[str, object] = {}
        self._group = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self._group = runtime_context.get_metrics_group().add_group("meterflow")
        for r in Reason:
            self._counter(r.value)

    def _counter(self, code: str):
        c = self._counters.get(code)
        if c is None and self._group is not None:
            c = self._counters[code] = self._group.add_group("reason", code).counter("events_rejected")
        return c

    def map(self, value):
        c = self._counter(value[self.field])
        if c is not None:
            c.inc()
        return value


def _through(t_env: StreamTableEnvironment, table: Table, fn: MapFunction) -> Table:
    """``table`` unchanged, each row passed through the identity map ``fn`` on the way."""
    ds = t_env.to_data_stream(table)
    return t_env.from_data_stream(ds.map(fn, output_type=ds.get_type()))


def counted(t_env: StreamTableEnvironment, table: Table, metric: str) -> Table:
    """``table`` unchanged, its rows counted in counter ``meterflow.<metric>``."""
    return _through(t_env, table, CountThrough(metric))


def counted_by_reason(t_env: StreamTableEnvironment, table: Table, column: str = "reason") -> Table:
    """``table`` unchanged, its rows counted by ``column`` in ``meterflow.reason.<code>.events_rejected``."""
    index = table.get_resolved_schema().get_column_names().index(column)
    return _through(t_env, table, CountByReason(index))
