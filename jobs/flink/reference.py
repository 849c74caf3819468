"""The reference implementation of the metering semantics: the same job written plainly with
PyFlink's DataStream API — a Python validation map, a Python keyed dedup, and
``.window(TumblingEventTimeWindows).allowed_lateness(L).side_output_late_data(tag)``.

It pins what meterflow's fast job (jobs/flink/metering.py) must compute: a test runs both on the same
input (the same source table, so the same watermarks) and compares the final per-window
quantities and the accepted / duplicate / rejected / late counts. It is also the baseline (c) of
``scripts/bench_metering.py``. It is slow by design (per-event Python state and windows): never
use it for production.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyflink.common import Row, Time, Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import DataStream, OutputTag
from pyflink.datastream.functions import (
    KeyedProcessFunction,
    ProcessFunction,
    ProcessWindowFunction,
    RuntimeContext,
)
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.datastream.window import TumblingEventTimeWindows
from pyflink.table import StreamTableEnvironment, Table

from operators.validate import validate_row
from schemas.config import Settings

VALIDATED_NAMES = ["ok", "reason", "event_id", "customer_id", "meter", "event_time_ms", "quantity"]


def _validated_type() -> TypeInformation:  # a fresh type object for every use (OutputTag pickling)
    return Types.ROW_NAMED(
        VALIDATED_NAMES,
        [Types.BOOLEAN(), Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(),
         Types.STRING()],
    )


def _window_type() -> TypeInformation:
    return Types.ROW_NAMED(
        ["customer_id", "meter", "window_start_ms", "window_end_ms", "qsum", "qcount", "qmax", "firing"],
        [Types.STRING(), Types.STRING(), Types.LONG(), Types.LONG(), Types.STRING(), Types.LONG(),
         Types.STRING(), Types.INT()],
    )


class Validate(ProcessFunction):
    """The contract validator; the record timestamp is the source's rowtime."""

    def __init__(self, meters: list[str], skew_ms: int) -> None:
        self.meters = frozenset(meters)
        self.skew = timedelta(milliseconds=skew_ms)

    def process_element(self, row: Row, ctx: ProcessFunction.Context):
        r = validate_row(row["value"], datetime.now(UTC), self.skew, self.meters)
        ok = bool(r[0]) and ctx.timestamp() == r[6]  # the source's rowtime agrees
        reason = r[1] if not r[0] else (None if ok else "future_event_time" if r[6] > r[11]
                                         else "invalid_event_time")
        yield Row(ok=ok, reason=reason, event_id=r[3], customer_id=r[4], meter=r[5],
                  event_time_ms=r[6], quantity=r[7])


class Dedup(KeyedProcessFunction):
    """Keep the first event of each event_id; duplicates go to a side output."""

    def __init__(self, duplicates_tag: OutputTag) -> None:
        self.duplicates_tag = duplicates_tag

    def open(self, runtime_context: RuntimeContext) -> None:
        self.seen = runtime_context.get_state(ValueStateDescriptor("seen", Types.BOOLEAN()))

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context):
        if self.seen.value():
            yield self.duplicates_tag, value["event_id"]
        else:
            self.seen.update(True)
            yield value


class Aggregate(ProcessWindowFunction):
    """Every firing (on time, then one per late event within lateness) emits the full window,
    numbered per window (per-window state: it is cleared with the window)."""

    def process(self, key, context: ProcessWindowFunction.Context, elements):
        from decimal import Decimal

        firings = context.window_state().get_state(ValueStateDescriptor("firings", Types.INT()))
        qs = [Decimal(e["quantity"]) for e in elements]
        firing = (firings.value() or 0) + 1
        firings.update(firing)
        w = context.window()
        yield Row(customer_id=key[0], meter=key[1], window_start_ms=w.start, window_end_ms=w.end,
                  qsum=str(sum(qs)), qcount=len(qs), qmax=str(max(qs)), firing=firing)

    def clear(self, context: ProcessWindowFunction.Context) -> None:
        context.window_state().get_state(ValueStateDescriptor("firings", Types.INT())).clear()


@dataclass(frozen=True)
class ReferenceOutputs:
    windows: DataStream  # every firing of every window
    late: DataStream  # side_output_late_data: beyond allowed lateness
    invalid: DataStream
    duplicates: DataStream  # event ids, one per duplicate occurrence


def build_reference(t_env: StreamTableEnvironment, source: str, settings: Settings) -> ReferenceOutputs:
    """Wire the plain DataStream pipeline on ``source`` (the same source table as the fast job:
    same computed event time and watermark definition)."""
    t = settings.time
    table: Table = t_env.sql_query(f"SELECT `value`, rowtime FROM {source}")
    ds = t_env.to_data_stream(table)  # rowtime -> record timestamps, source watermarks flow on
    validated = ds.process(
        Validate(sorted(settings.meter_aggregations), int(t.max_future_skew.total_seconds() * 1000)),
        output_type=_validated_type(),
    )
    invalid = validated.filter(lambda r: not r["ok"])
    dup_tag = OutputTag("duplicates", Types.STRING())
    accepted = (
        validated.filter(lambda r: r["ok"])
        .key_by(lambda r: r["event_id"], key_type=Types.STRING())
        .process(Dedup(dup_tag), output_type=_validated_type())
    )
    late_tag = OutputTag("late", _validated_type())
    windows = (
        accepted.key_by(lambda r: (r["customer_id"], r["meter"]),
                        key_type=Types.TUPLE([Types.STRING(), Types.STRING()]))
        .window(TumblingEventTimeWindows.of(Time.milliseconds(int(t.window_size.total_seconds() * 1000))))
        .allowed_lateness(int(t.allowed_lateness.total_seconds() * 1000))
        .side_output_late_data(late_tag)
        .process(Aggregate(), output_type=_window_type())
    )
    return ReferenceOutputs(
        windows=windows,
        late=windows.get_side_output(late_tag),
        invalid=invalid,
        duplicates=accepted.get_side_output(dup_tag),
    )
