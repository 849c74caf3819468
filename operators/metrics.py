"""Flink metrics of the metering job that the JVM operators do not give by name.

Each is a tiny Python scalar function placed on a RARE branch (duplicates, late events), so it
costs nothing on the hot path: it returns its input unchanged and counts it. The validation
function (operators/validate.py) counts valid and rejected-by-reason events and keeps the
watermark-lag gauge. All live under the metric group ``meterflow``:

=============================  ======================================================
``events_valid``               events that passed the contract (before dedup)
``reason.<code>.events_rejected``  dead-lettered events, by reason code
``events_duplicate``           duplicates dropped by dedup (per duplicate occurrence)
``events_late_within``         late events within allowed lateness (window revisions)
``events_late_beyond``         events beyond allowed lateness (to usage-events-late)
``watermark_lag_ms``           processing time minus the source watermark, last event
=============================  ======================================================
"""

from __future__ import annotations

from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction, udf


class CountThrough(ScalarFunction):
    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._counter = None

    def open(self, function_context: FunctionContext) -> None:
        self._counter = function_context.get_metric_group().add_group("meterflow").counter(self.metric)

    def eval(self, value: str | None) -> str | None:
        if self._counter is not None:
            self._counter.inc()
        return value


def count_through(metric: str):  # noqa: ANN201
    """``mf_count_x(col)`` returns ``col`` and increments counter ``metric``."""
    return udf(CountThrough(metric), input_types=[DataTypes.STRING()], result_type=DataTypes.STRING())


def register_metric_functions(t_env) -> None:  # noqa: ANN001
    t_env.create_temporary_system_function("mf_count_duplicate", count_through("events_duplicate"))
    t_env.create_temporary_system_function("mf_count_late_within", count_through("events_late_within"))
    t_env.create_temporary_system_function("mf_count_late_beyond", count_through("events_late_beyond"))
