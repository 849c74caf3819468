"""The metering job: Kafka ``usage-events`` → validation → dedup → event-time windows with
watermarks and allowed lateness → the ledger topic (accepted events, window aggregates and late
revisions), ``usage-events-late`` (beyond allowed lateness) and ``usage-events-dlq`` (invalid).

Run it locally (embedded mini-cluster) with ``meterflow run metering [--bounded]``, or submit this
file unchanged: ``flink run -py jobs/flink/metering.py -pyfs jobs,operators,pricing,schemas,sinks``.
The ledger writer (``sinks/ledger.py``, started by ``meterflow run metering``) applies the ledger
topic to PostgreSQL and rates the windows.

Design (docs/ARCHITECTURE.md has the long form):

* Stateful per-event work runs in the JVM: the source parses ``event_time`` in SQL for
  per-partition watermarks (bounded out-of-orderness, idleness), dedup is Flink SQL's keep-first
  deduplication, and the windows are Flink SQL tumbling windows.
* Validation has two disjoint paths, split on a pattern (:func:`fast_path_sql`): payloads in the
  producers' compact layout are validated and cut into fields in Flink SQL (no Python); every
  other payload goes through the Python contract validator (operators/validate.py). Both give
  the same row for every payload (tests/unit/test_jvm_fast_path.py,
  tests/pipeline/test_fast_path_pipeline.py).
* Allowed lateness with exactly the semantics of Flink's WindowOperator + EventTimeTrigger:
  every accepted event is classified against ``CURRENT_WATERMARK`` in its validation branch, in
  the source's chain, i.e. against the watermark that followed it out of the source. With
  ``end`` the window end and ``L`` the allowed lateness:

  - ``end - 1 + L <= watermark`` → beyond lateness → ``usage-events-late`` (the side output);
  - ``end - 1 <= watermark`` → late within lateness → a single-event partial of its window,
    which the ledger folds into a new revision (Flink would re-fire the window);
  - otherwise → on time → the SQL window aggregate, which fires when the watermark passes the
    window end. The window operator's watermark is never ahead of the classifier's (it is the
    minimum over its inputs, which carry the classifier's watermarks in order), so an event
    classified on time is never dropped as late there.

  The window's final value is the sum (max, count) of its on-time aggregate and its late partials
  — the same as the final firing of a Flink window with allowed lateness.
* Every output goes to Kafka with transactions committed on checkpoints (exactly-once), so what
  the ledger writer reads is consistent with the job's checkpointed state across restarts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/flink/metering.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyflink.table import DataTypes, Schema, StreamTableEnvironment, Table

from operators.metrics import counted, counted_by_reason
from operators.validate import (
    PASSED_FIELDS,
    VALIDATED_FIELDS,
    ValidateProcess,
    validated_stream_type,
)
from schemas.config import Settings, load_settings
from schemas.event import DLQ_PAYLOAD_KEEP_BYTES, jvm_fast_event_pattern

# the topics' column layouts: one definition each, beside their parsers
from schemas.records import DLQ_COLUMNS, LATE_COLUMNS, LEDGER_COLUMNS

EPOCH_LTZ = "TO_TIMESTAMP_LTZ(0, 3)"
# the dead-letter message of an event the JVM judged further in the future than max_future_skew
FUTURE_MESSAGE = "event_time is further in the future than max_future_skew"
# RFC 3339 with an offset, as the contract's validator accepts it (upper-cased first: t/z).
RFC3339_SQL_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"


def _seconds_literal(td: timedelta) -> str:
    ms = int(td / timedelta(milliseconds=1))
    d, rest = divmod(ms, 86_400_000)
    h, rest = divmod(rest, 3_600_000)
    m, rest = divmod(rest, 60_000)
    sec, milli = divmod(rest, 1000)
    return f"INTERVAL '{d} {h:02d}:{m:02d}:{sec:02d}.{milli:03d}' DAY TO SECOND(3)"


def _ms(td: timedelta) -> int:
    return int(td / timedelta(milliseconds=1))


def rfc3339_sql(x: str) -> str:
    """SQL: an upper-cased RFC 3339 string -> TIMESTAMP_LTZ(3) (ms, truncated), NULL if malformed."""
    return (
        f"CASE WHEN REGEXP({x}, '{RFC3339_SQL_RE}') THEN "
        f"TIMESTAMPADD(MINUTE, "
        f"-(CASE WHEN REGEXP_EXTRACT({x}, '([+-])\\d{{2}}:\\d{{2}}$', 1) = '-' THEN -1 ELSE 1 END) "
        f"* COALESCE(CAST(REGEXP_EXTRACT({x}, '[+-](\\d{{2}}):\\d{{2}}$', 1) AS INT) * 60 "
        f"+ CAST(REGEXP_EXTRACT({x}, '[+-]\\d{{2}}:(\\d{{2}})$', 1) AS INT), 0), "
        f"TIMESTAMPADD(MILLISECOND, "
        f"CAST(SUBSTR(RPAD(COALESCE(REGEXP_EXTRACT({x}, '^[^.]{{19}}\\.(\\d+)', 1), ''), 3, '0'), 1, 3) AS INT), "
        f"TO_TIMESTAMP_LTZ(SUBSTR({x}, 1, 19), 'yyyy-MM-dd''T''HH:mm:ss', 'UTC'))) END"
    )


def event_time_sql(x: str) -> str:
    """SQL: an RFC 3339 string -> TIMESTAMP_LTZ(3), NULL if malformed. A cheap fast path for the
    common UTC shape ``yyyy-MM-ddTHH:mm:ss.SSSZ``; the general parser (on the upper-cased text)
    otherwise. ``x`` is evaluated twice on the fast path (Flink's code generator does not share
    sub-expressions), so keep it cheap."""
    fast = f"TO_TIMESTAMP_LTZ(SUBSTR({x}, 1, 23), 'yyyy-MM-dd''T''HH:mm:ss.SSS', 'UTC')"
    return f"(CASE WHEN {x} LIKE '____-__-__T__:__:__.___Z' THEN {fast} ELSE {rfc3339_sql(f'UPPER({x})')} END)"


def source_columns_sql(settings: Settings) -> str:
    """The computed event time and the watermark every events source table has (Kafka or test
    files). An event without a readable time gets the epoch. An event further in the future than
    max_future_skew keeps its time as ``rowtime`` but contributes no watermark: it cannot drag the
    watermark forward (and the validator dead-letters it). The guard sits in the
    WATERMARK expression, which reads the computed ``rowtime`` once, instead of in ``rowtime``
    itself, where the parse would be evaluated again for every comparison."""
    t = settings.time
    et = "JSON_VALUE(CAST(`value` AS STRING), '$.event_time')"
    # NULLIF(LEAST(rowtime, horizon), horizon): rowtime, or NULL (no watermark from this event)
    # at or beyond the horizon — `rowtime` appears once, because the source's watermark
    # generator expands it into the whole parse again (CURRENT_TIMESTAMP is one value per record)
    horizon = f"CURRENT_TIMESTAMP + {_seconds_literal(t.max_future_skew)}"
    delay = _seconds_literal(t.max_out_of_orderness)
    return f"""
  `rowtime` AS COALESCE({event_time_sql(et)}, {EPOCH_LTZ}),
  WATERMARK FOR `rowtime` AS NULLIF(LEAST(`rowtime`, {horizon}), {horizon}) - {delay}"""


def _kafka_common(settings: Settings, topic: str) -> str:
    props = "".join(
        f",\n  'properties.{k}' = '{v}'" for k, v in sorted(settings.kafka.properties.items())
    )
    return (
        f"'connector' = 'kafka',\n  'topic' = '{topic}',\n"
        f"  'properties.bootstrap.servers' = '{settings.kafka.bootstrap_servers}'{props}"
    )


def bound_marker_topic(settings: Settings) -> str:
    """An always-empty topic that restored bounded runs subscribe to besides the events topic
    (see :func:`create_kafka_source`); nothing may ever be written to it."""
    return f"{settings.topics.events}-bound-marker"


def create_kafka_source(t_env: StreamTableEnvironment, settings: Settings, *, bounded: bool,
                        name: str = "events_src", topic: str | None = None,
                        startup: str = "group-offsets",
                        stop_offsets: dict[int, int] | None = None, restore_marker: bool = False) -> str:
    """``bounded``: stop at ``stop_offsets`` (partition -> offset) when given, else at the latest
    offsets present when the job starts.

    ``restore_marker`` (a bounded run restored from a checkpoint, jobs/flink/run.py): the restored
    splits keep their stopping offsets, but a restored enumerator that finds no partition change
    never tells its readers "no more splits", so the source would never finish (FLINK-31006, open
    in connector 5.0). Subscribing to the always-empty :func:`bound_marker_topic` as well is such
    a change (a new partition; and for a later restore of this run, one missing from the
    subscription): the restored run reads up to the SAME stop offsets, ends, and fires every
    window. Specific stop offsets support one topic only, so this subscription is bounded by
    latest offsets, which only the marker's new split uses."""
    t = settings.time
    bounded_opt = ""
    topics = topic or settings.topics.events
    if bounded and restore_marker:
        bounded_opt = "'scan.bounded.mode' = 'latest-offset',"
        topics = f"{topics};{bound_marker_topic(settings)}"
    elif bounded and stop_offsets is not None:
        spec = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(stop_offsets.items()))
        bounded_opt = f"'scan.bounded.mode' = 'specific-offsets',\n  'scan.bounded.specific-offsets' = '{spec}',"
    elif bounded:
        bounded_opt = "'scan.bounded.mode' = 'latest-offset',"
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE {name} (
  `value` BYTES,
  `src_topic` STRING METADATA FROM 'topic' VIRTUAL,
  `src_partition` INT METADATA FROM 'partition' VIRTUAL,
  `src_offset` BIGINT METADATA FROM 'offset' VIRTUAL,{source_columns_sql(settings)}
) WITH (
  {_kafka_common(settings, topics)},
  'properties.group.id' = '{settings.kafka.consumer_group}',
  'properties.auto.offset.reset' = 'earliest',
  'properties.isolation.level' = 'read_committed',
  'scan.startup.mode' = '{startup}',
  {bounded_opt}
  'scan.watermark.idle-timeout' = '{_ms(t.idleness_timeout)} ms',
  'scan.watermark.emit.strategy' = '{"on-event" if t.watermark_emit == "on-event" else "on-periodic"}',
  'format' = 'raw'
)""")
    return name


def create_kafka_sinks(t_env: StreamTableEnvironment, settings: Settings, *, exactly_once: bool = True,
                       ledger_topic: str | None = None) -> dict[str, str]:
    """Kafka sink tables for the three outputs; JSON values, the ledger keyed by customer_id."""
    guarantee = "exactly-once" if exactly_once else "at-least-once"

    producer = "".join(f"'properties.{k}' = '{v}',\n  " for k, v in sorted(settings.kafka.sink_properties.items()))

    def sink(name: str, topic: str, cols: list[tuple[str, str]], key: str | None) -> str:
        keyed = f"'key.format' = 'raw',\n  'key.fields' = '{key}'," if key else ""
        txn = (
            f"'sink.transactional-id-prefix' = 'meterflow-{settings.kafka.consumer_group}-{name}',\n"
            "  'properties.transaction.timeout.ms' = '900000',"
            if exactly_once else ""
        )
        columns = ",\n  ".join(f"`{c}` {t}" for c, t in cols)
        t_env.execute_sql(f"""
CREATE TEMPORARY TABLE {name} (
  {columns}
) WITH (
  {_kafka_common(settings, topic)},
  {keyed}
  {producer}'sink.delivery-guarantee' = '{guarantee}',
  {txn}
  'value.format' = 'json',
  'value.json.encode.decimal-as-plain-number' = 'true'
)""")
        return name

    txn_dup = (
        f"'sink.transactional-id-prefix' = 'meterflow-{settings.kafka.consumer_group}-dups',\n"
        "  'properties.transaction.timeout.ms' = '900000',"
        if exactly_once else ""
    )
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE dup_sink (
  `event_id` STRING,
  `duplicates` INT,
  `epoch_ms` BIGINT,
  PRIMARY KEY (`event_id`) NOT ENFORCED
) WITH (
  'connector' = 'upsert-kafka',
  'topic' = '{settings.topics.duplicates}',
  'properties.bootstrap.servers' = '{settings.kafka.bootstrap_servers}',
  'key.format' = 'raw',
  'value.format' = 'json',
  {producer}'sink.delivery-guarantee' = '{guarantee}',
  {txn_dup}
  'sink.buffer-flush.max-rows' = '1000',
  'sink.buffer-flush.interval' = '1 s'
)""")
    return {
        "duplicates": "dup_sink",
        "ledger": sink("ledger_sink", ledger_topic or settings.topics.ledger, LEDGER_COLUMNS, "customer_id"),
        "late": sink("late_sink", settings.topics.late, LATE_COLUMNS, "customer_id"),
        "invalid": sink("dlq_sink", settings.topics.dlq, DLQ_COLUMNS, None),
    }


@dataclass(frozen=True)
class MeteringOutputs:
    """The job's named outputs (append-only tables)."""

    ledger: Table  # accepted events + window aggregates + late revisions, for the ledger writer
    late: Table  # beyond allowed lateness: the side output
    invalid: Table  # dead letters with reason codes
    duplicates: Table  # upsert stream: event_id -> duplicates seen so far


def _rowtime_schema() -> Schema:
    """from_data_stream: the record timestamp as ``rt`` (rowtime, with the stream's watermarks) and
    a fresh processing-time ``proc``; the physical columns come from the stream's type."""
    return (
        Schema.new_builder()
        .column_by_metadata("rt", DataTypes.TIMESTAMP_LTZ(3), "rowtime", True)
        .column_by_expression("proc", "PROCTIME()")
        .watermark("rt", "SOURCE_WATERMARK()")
        .build()
    )


def _materialize(t_env: StreamTableEnvironment, table: Table) -> Table:
    """Turn a query into a stream that every consumer shares: through a DataStream and back, with
    the rowtime (as ``rt``) and the watermarks carried over, and a fresh processing-time ``proc``."""
    return t_env.from_data_stream(t_env.to_data_stream(table), _rowtime_schema())


def fast_path_claim_sql(settings: Settings) -> str:
    """SQL: TRUE for a payload the JVM fast path claims, i.e. one the pattern of
    :func:`schemas.event.jvm_fast_event_pattern` matches (NULL for a NULL payload)."""
    pattern = jvm_fast_event_pattern(settings.meter_aggregations).replace("'", "''")
    return f"REGEXP(CAST(`value` AS STRING), '{pattern}')"


def fast_path_sql(source: str, settings: Settings) -> str:
    """The JVM fast path: the SELECT of the claimed rows of ``source`` (``claimed`` is
    :func:`fast_path_claim_sql`, ``rt`` its rowtime) in the validated layout. A claimed payload
    is one the contract accepts, in ASCII (characters are bytes), of at most ~75 KB (its dead
    letter needs no truncation), with every field a verbatim substring, so the fields are cut out
    by position (SPLIT_INDEX on the quote: no field holds one) instead of being parsed again. Only
    the time-dependent rule is left: an event further ahead of the ingestion time than
    max_future_skew is rejected here, with the validator's reason code."""
    s = "CAST(`value` AS STRING)"
    et = f"SPLIT_INDEX({s}, '\"', 7)"  # yyyy-MM-ddTHH:mm:ss[.SSS]Z: the pattern checked the date
    event_time_ms = (
        f"(CAST(TIMESTAMPDIFF(DAY, DATE '1970-01-01', CAST(SUBSTR({et}, 1, 10) AS DATE)) AS BIGINT) * 86400000"
        f" + CAST(SUBSTR({et}, 12, 2) AS INT) * 3600000 + CAST(SUBSTR({et}, 15, 2) AS INT) * 60000"
        f" + CAST(SUBSTR({et}, 18, 2) AS INT) * 1000"
        f" + CASE WHEN CHAR_LENGTH({et}) = 24 THEN CAST(SUBSTR({et}, 21, 3) AS INT) ELSE 0 END)"
    )
    # ms since the epoch, now (CURRENT_TIMESTAMP is one value per record; the session zone is UTC)
    now_ms = ("(CAST(TIMESTAMPDIFF(MINUTE, TO_TIMESTAMP_LTZ(0, 3), CURRENT_TIMESTAMP) AS BIGINT) * 60000"
              " + EXTRACT(SECOND FROM CURRENT_TIMESTAMP) * 1000 + EXTRACT(MILLISECOND FROM CURRENT_TIMESTAMP))")
    # token 17 is the key after meter; with quantity, token 18 is ':<number>,' or ':<number>}'
    q_token = f"SPLIT_INDEX({s}, '\"', 18)"
    quantity = (f"CASE WHEN SPLIT_INDEX({s}, '\"', 17) = 'quantity' "
                f"THEN SUBSTR({q_token}, 2, CHAR_LENGTH({q_token}) - 2) ELSE '1' END")
    p_at = f"POSITION(',\"properties\":' IN {s})"  # the first one is the top-level key
    properties = (f"CASE WHEN {p_at} > 0 "
                  f"THEN SUBSTR({s}, {p_at} + 14, CHAR_LENGTH({s}) - {p_at} - 14) END")
    future = f"event_time_ms > ingestion_time_ms + {_ms(settings.time.max_future_skew)}"
    select = f"""
SELECT `value`, src_topic, src_partition, src_offset,
       NOT ({future}) AS ok,
       CASE WHEN {future} THEN 'future_event_time' END AS reason,
       CASE WHEN {future} THEN '{FUTURE_MESSAGE}' END AS message,
       event_id, customer_id, meter, event_time_ms, quantity, properties,
       CAST(NULL AS STRING) AS payload_b64, CASE WHEN {future} THEN {s} END AS payload_text,
       ingestion_time_ms, CASE WHEN {future} THEN SHA256({s}) END AS payload_sha256,
       CHAR_LENGTH({s}) AS payload_bytes,
       rowtime AS rt, PROCTIME() AS proc
FROM (
  SELECT `value`, src_topic, src_partition, src_offset, rt AS rowtime,
         SPLIT_INDEX({s}, '"', 3) AS event_id, SPLIT_INDEX({s}, '"', 11) AS customer_id,
         SPLIT_INDEX({s}, '"', 15) AS meter, {event_time_ms} AS event_time_ms,
         {quantity} AS quantity, {properties} AS properties, {now_ms} AS ingestion_time_ms
  FROM {source} WHERE claimed
)"""
    return select


def validated(t_env: StreamTableEnvironment, source: str, settings: Settings) -> Table:
    """Every source row, validated against the contract exactly once: the source fields, then
    VALIDATED_FIELDS (operators/validate.py), ``rt`` (rowtime), ``proc`` (processing time),
    ``accepted``, ``jvm_future`` and ``validated_by`` ('jvm' or 'python').

    Two disjoint branches split on a deterministic predicate (the pattern), then a UNION ALL:
    the JVM fast path (:func:`fast_path_sql`) for the common compact layout, and the Python
    validator (a DataStream process function between to_data_stream and from_data_stream:
    rowtime travels as the record timestamp, watermarks flow through) for every other payload.

    Both branches read ONE scan of the source, shared through a DataStream. The Python branch is
    translated to a DataStream when it is built and the fast path when the job is submitted, so
    the planner cannot share a scan between them: each branch had its own Kafka source. Two
    Kafka sources in one consumer group lose records on restore: a split a source has not read
    from yet is checkpointed as "start at the group's committed offset", which the OTHER source
    has moved on (tests/pipeline/test_job_graph.py, docs/ARCHITECTURE.md §7)."""
    t = settings.time
    t_env.create_temporary_view("mf_source_once", _materialize(t_env, t_env.sql_query(
        f"SELECT `value`, src_topic, src_partition, src_offset, ({fast_path_claim_sql(settings)}) IS TRUE "
        f"AS claimed, rowtime FROM {source}")))
    raw = t_env.to_data_stream(t_env.sql_query(
        "SELECT `value`, src_topic, src_partition, src_offset, rt FROM mf_source_once WHERE NOT claimed"))
    checked = raw.process(
        ValidateProcess(sorted(settings.meter_aggregations), _ms(t.max_future_skew)),
        output_type=validated_stream_type(),
    ).name("validate")
    t_env.create_temporary_view("mf_validated_slow", t_env.from_data_stream(checked, _rowtime_schema()))
    t_env.create_temporary_view("mf_validated_fast", t_env.sql_query(fast_path_sql("mf_source_once", settings)))
    columns = ", ".join(f"`{n}`" for n, _ in PASSED_FIELDS + VALIDATED_FIELDS)
    lateness = _lateness_sql(_ms(t.window_size), _ms(t.allowed_lateness))
    # materialized once: every consumer (dead letters, dedup, duplicate counts) reads the same
    # rows instead of the planner re-evaluating the fast path's pattern and cuts in each branch
    return _materialize(t_env, t_env.sql_query(f"""
SELECT {columns}, accepted, jvm_future, validated_by, window_start_ms, lateness, wm, rt AS rowtime FROM (
SELECT *,
       ok AND rt = TO_TIMESTAMP_LTZ(event_time_ms, 3) AS accepted,
       -- the JVM's guard judged it future (its clock ran before the validator's)
       event_time_ms > ingestion_time_ms AS jvm_future,
       'python' AS validated_by,
       {lateness}
FROM mf_validated_slow
UNION ALL
SELECT *, ok AS accepted, FALSE AS jvm_future, 'jvm' AS validated_by,
       {lateness}
FROM mf_validated_fast)"""))


def _lateness_sql(w_ms: int, l_ms: int) -> str:
    """SQL columns window_start_ms, lateness and wm of a validated row, against the watermark of
    the operator evaluating them (CURRENT_WATERMARK; ``wm`` stays a timestamp: only the few events
    beyond lateness need it as text, so it is formatted there, not for every event). Evaluated in
    each validation branch, in the source's chain, before any exchange: the watermark an event is
    judged by is the one that
    followed it out of the source (in order, per source subtask), so the verdict does not depend
    on how two network channels interleave further down. With ``end`` the window end and ``L`` the
    allowed lateness: ``end - 1 + L <= wm`` → beyond; ``end - 1 <= wm`` → late; else on time."""
    start = f"(event_time_ms - MOD(event_time_ms, {w_ms}))"
    return f"""{start} AS window_start_ms,
       CASE WHEN TO_TIMESTAMP_LTZ({start} + {w_ms - 1 + l_ms}, 3) <= CURRENT_WATERMARK(rt) THEN 'beyond'
            WHEN TO_TIMESTAMP_LTZ({start} + {w_ms - 1}, 3) <= CURRENT_WATERMARK(rt) THEN 'late'
            ELSE 'on_time' END AS lateness,
       CURRENT_WATERMARK(rt) AS wm"""


def _dead_letter_payload_sql() -> str:
    """SQL: the payload columns of DLQ_COLUMNS, bounded (schemas.event.dead_letter_payload). A row
    the validator rejected carries them; a row it accepted that the JVM dead-letters (a time the
    source read differently, or a JVM clock ahead of the validator's) is UTF-8 whose escaped text
    fits the record (the contract's size rule), so its text is kept whole."""
    s = "CAST(`value` AS STRING)"
    keep = DLQ_PAYLOAD_KEEP_BYTES
    return f"""CASE WHEN NOT ok THEN payload_b64 END AS payload_b64,
       CASE WHEN NOT ok THEN payload_text ELSE {s} END AS payload,
       COALESCE(NOT ok AND payload_text IS NULL AND payload_bytes > {keep}, FALSE) AS payload_truncated,
       payload_bytes, CASE WHEN NOT ok THEN payload_sha256 ELSE SHA256({s}) END AS payload_sha256"""


def build_metering(t_env: StreamTableEnvironment, source: str, settings: Settings) -> MeteringOutputs:
    """Wire the pipeline on top of ``source`` (a table with `value` BYTES, the source metadata
    columns and the computed columns of :func:`source_columns_sql`)."""
    t = settings.time
    w_ms = _ms(t.window_size)
    # dedup keeps an event id for the dedup horizon (processing time), at least allowed lateness
    t_env.get_config().set("table.exec.state.ttl", f"{_ms(t.dedup_horizon)} ms")

    t_env.create_temporary_view("mf_validated", validated(t_env, source, settings))

    invalid = counted_by_reason(t_env, t_env.sql_query(f"""
SELECT CASE WHEN NOT ok THEN reason
            WHEN jvm_future THEN 'future_event_time'
            ELSE 'invalid_event_time' END AS reason,
       CASE WHEN NOT ok THEN message
            WHEN jvm_future THEN '{FUTURE_MESSAGE}'
            ELSE 'event_time could not be read consistently' END AS message,
       {_dead_letter_payload_sql()},
       src_topic, src_partition, src_offset, ingestion_time_ms
FROM mf_validated WHERE accepted IS NOT TRUE"""))

    # keep-first deduplication by event_id, in the JVM (state: one entry per event id, TTL'd); the
    # first occurrence keeps the lateness class it was given in its validation branch
    classified = t_env.sql_query(f"""
SELECT event_id, customer_id, meter, event_time_ms, quantity, properties, ingestion_time_ms,
       src_topic, src_partition, src_offset, `value`, rt AS rowtime,
       window_start_ms, window_start_ms + {w_ms} AS window_end_ms, lateness, wm
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proc ASC) AS rn
  FROM mf_validated WHERE accepted IS TRUE
) WHERE rn = 1""")
    t_env.create_temporary_view("mf_classified", _materialize(t_env, classified))

    late = counted(t_env, t_env.sql_query("""
SELECT event_id, customer_id, meter, event_time_ms, quantity, properties,
       window_start_ms, window_end_ms, CAST(CAST(wm AS TIMESTAMP_LTZ(3)) AS STRING) AS `watermark`,
       CAST(`value` AS STRING) AS payload,
       ingestion_time_ms, src_topic, src_partition, src_offset
FROM mf_classified WHERE lateness = 'beyond'"""), "events_late_beyond")

    t_env.execute_sql("""
CREATE TEMPORARY VIEW mf_on_time AS
SELECT customer_id, meter, window_start_ms, CAST(quantity AS DECIMAL(38, 12)) AS q, rt
FROM mf_classified WHERE lateness = 'on_time'""")

    # every accepted event not beyond lateness, with its class: the ledger writer inserts it (or
    # finds it already accepted: a duplicate across runs, restarts or the dedup horizon) and makes
    # a late one within lateness a window revision; late ones pass a counter on their own branch
    ev_cols = """customer_id, meter, window_start_ms, window_end_ms,
       CAST(NULL AS STRING) AS qsum, CAST(NULL AS BIGINT) AS qcount, CAST(NULL AS STRING) AS qmax,
       event_id, event_time_ms, quantity, properties, ingestion_time_ms,
       src_topic, src_partition, src_offset, lateness"""
    t_env.create_temporary_view("mf_late_within", counted(t_env, t_env.sql_query(f"""
SELECT {ev_cols} FROM mf_classified WHERE lateness = 'late'"""), "events_late_within"))
    ledger = t_env.sql_query(f"""
SELECT 'event' AS kind, {ev_cols}
FROM mf_classified WHERE lateness = 'on_time'
UNION ALL
SELECT 'event' AS kind, * FROM mf_late_within
UNION ALL
SELECT 'window' AS kind, customer_id, meter, window_start_ms, window_start_ms + {w_ms},
       CAST(SUM(q) AS STRING), COUNT(*), CAST(MAX(q) AS STRING),
       CAST(NULL AS STRING), CAST(NULL AS BIGINT), CAST(NULL AS STRING), CAST(NULL AS STRING),
       CAST(NULL AS BIGINT), CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT),
       CAST(NULL AS STRING)
FROM TABLE(TUMBLE(TABLE mf_on_time, DESCRIPTOR(rt), {_seconds_literal(t.window_size)}))
GROUP BY customer_id, meter, window_start, window_end, window_start_ms""")
    # An independent count of duplicates (input = accepted + duplicates + rejected must tie out):
    # a JVM counter per event id, emitted from the second occurrence on, as an upsert stream. The
    # counter restarts from zero when the job starts without state or the id's state expired
    # (dedup horizon): `epoch_ms`, the first counted copy's ingestion time, tells the counting
    # epochs apart, so that the ledger writer adds them up instead of overwriting one with another.
    duplicates = t_env.sql_query("""
SELECT event_id, CAST(COUNT(*) - 1 AS INT) AS duplicates, MIN(ingestion_time_ms) AS epoch_ms
FROM mf_validated WHERE accepted IS TRUE
GROUP BY event_id HAVING COUNT(*) > 1""")
    return MeteringOutputs(ledger=ledger, late=late, invalid=invalid, duplicates=duplicates)


def submit(t_env: StreamTableEnvironment, outputs: MeteringOutputs, sinks: dict[str, str]):
    ss = t_env.create_statement_set()
    ss.add_insert(sinks["ledger"], outputs.ledger)
    ss.add_insert(sinks["late"], outputs.late)
    ss.add_insert(sinks["invalid"], outputs.invalid)
    ss.add_insert(sinks["duplicates"], outputs.duplicates)
    return ss.execute()


def build_job(settings: Settings, *, bounded: bool, parallelism: int | None = None,
              stop_offsets: dict[int, int] | None = None, restore_marker: bool = False):
    from jobs.flink.env import table_environment

    t_env = table_environment(settings, job_name="meterflow-metering", parallelism=parallelism)
    src = create_kafka_source(t_env, settings, bounded=bounded, stop_offsets=stop_offsets,
                              restore_marker=restore_marker)
    outputs = build_metering(t_env, src, settings)
    sinks = create_kafka_sinks(t_env, settings)
    return t_env, outputs, sinks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="TOML config file")
    ap.add_argument("--bounded", action="store_true", help="stop at the offsets present at start")
    ap.add_argument("--restore", help="restore from this checkpoint/savepoint path, or 'latest'")
    args, _ = ap.parse_known_args(argv)
    from jobs.flink.env import (
        context_configuration,
        is_detached,
        submitted_by_flink_run,
        with_restore,
    )

    settings = with_restore(load_settings(args.config), args.restore)
    t_env, outputs, sinks = build_job(settings, bounded=args.bounded)
    result = submit(t_env, outputs, sinks)
    # `flink run -d`: the job is submitted; waiting would keep the client attached after all
    if not (submitted_by_flink_run() and is_detached(context_configuration())):
        result.wait()  # attached: returns when the job finishes (a stop-with-savepoint too)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
