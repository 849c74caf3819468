"""Run the metering pipeline (and its DataStream reference) on Flink's mini-cluster over a bounded
file of raw events, with every output written to JSON files, and read the results back.

The source is a file of one raw payload per line with the same computed event-time column and
watermark definition as the Kafka source (jobs.flink.metering.source_columns_sql); the file source has
no partitions, so its watermark advances per record (deterministic tests).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pyflink.common import Row, Types

from jobs.flink.env import table_environment
from jobs.flink.metering import build_metering, source_columns_sql
from jobs.flink.reference import build_reference
from schemas.config import Settings
from schemas.records import DLQ_COLUMNS, LATE_COLUMNS, LEDGER_COLUMNS


@dataclass
class Results:
    ledger: list[dict[str, Any]] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    ref_windows: list[dict[str, Any]] = field(default_factory=list)
    ref_late: list[dict[str, Any]] = field(default_factory=list)
    ref_invalid: list[dict[str, Any]] = field(default_factory=list)
    ref_duplicates: list[dict[str, Any]] = field(default_factory=list)

    # -- derived views -------------------------------------------------------------------
    def final_windows(self) -> dict[tuple[str, str, int], tuple[Decimal, int, Decimal]]:
        """Each window's final (sum, count, max): its on-time aggregate (the firing) plus each late
        event within lateness (an event message with ``lateness = 'late'``), as Flink's window
        with allowed lateness would end (the ledger writer aggregates the same events)."""
        out: dict[tuple[str, str, int], list] = defaultdict(lambda: [Decimal(0), 0, Decimal(0)])
        for r in self.ledger:
            if r["kind"] == "window":
                q = (Decimal(r["qsum"]), r["qcount"], Decimal(r["qmax"]))
            elif r["kind"] == "event" and r["lateness"] == "late":
                q = (Decimal(r["quantity"]), 1, Decimal(r["quantity"]))
            else:
                continue
            w = out[(r["customer_id"], r["meter"], r["window_start_ms"])]
            w[0] += q[0]
            w[1] += q[1]
            w[2] = max(w[2], q[2])
        return {k: (v[0], v[1], v[2]) for k, v in out.items()}

    def ref_final_windows(self) -> dict[tuple[str, str, int], tuple[Decimal, int, Decimal]]:
        last: dict[tuple[str, str, int], dict] = {}
        for r in self.ref_windows:
            k = (r["customer_id"], r["meter"], r["window_start_ms"])
            if k not in last or r["firing"] > last[k]["firing"]:
                last[k] = r
        return {k: (Decimal(r["qsum"]), r["qcount"], Decimal(r["qmax"])) for k, r in last.items()}

    def accepted_ids(self) -> set[str]:
        return {r["event_id"] for r in self.ledger if r["kind"] == "event"}

    def late_within(self) -> list[dict[str, Any]]:
        """Event messages of late events within allowed lateness (each a window revision)."""
        return [r for r in self.ledger if r["kind"] == "event" and r["lateness"] == "late"]

    def late_ids(self) -> set[str]:
        return {r["event_id"] for r in self.late}

    def reasons(self) -> Counter[str]:
        return Counter(r["reason"] for r in self.invalid)


def create_file_source(t_env, settings: Settings, folder: Path, name: str = "events_src") -> str:
    """A bounded source table over a folder of files, one raw payload per line, with the Kafka
    source's computed event time and watermark."""
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE {name} (
  `value` BYTES,
  `src_topic` AS 'file',
  `src_partition` AS 0,
  `src_offset` AS CAST(0 AS BIGINT),{source_columns_sql(settings)}
) WITH ('connector' = 'filesystem', 'path' = '{folder}', 'format' = 'raw')""")
    return name


def _sink(t_env, name: str, cols: list[tuple[str, str]], path: Path) -> str:
    columns = ", ".join(f"`{c}` {t}" for c, t in cols)
    t_env.execute_sql(
        f"CREATE TEMPORARY TABLE {name} ({columns}) WITH ("
        f"'connector' = 'filesystem', 'path' = '{path}', 'format' = 'json')"
    )
    return name


def run_pipeline(settings: Settings, lines: list[bytes | str], workdir: Path, *,
                 parallelism: int = 1, with_reference: bool = False) -> Results:
    src_dir = workdir / "in"
    src_dir.mkdir(parents=True, exist_ok=True)
    with (src_dir / "events.txt").open("wb") as f:
        for line in lines:
            f.write((line.encode() if isinstance(line, str) else line) + b"\n")
    out = workdir / "out"
    # the file sink commits its files on checkpoints: checkpoint often, into the work dir
    s = settings.model_copy(update={"flink": settings.flink.model_copy(update={
        "checkpoint_interval": settings.flink.checkpoint_interval.__class__(seconds=1),
        "checkpoint_dir": str(workdir / "checkpoints")})})
    t_env = table_environment(s, job_name="meterflow-pipeline-test", parallelism=parallelism)
    o = build_metering(t_env, create_file_source(t_env, s, src_dir), s)
    ss = t_env.create_statement_set()
    ss.add_insert(_sink(t_env, "t_ledger", LEDGER_COLUMNS, out / "ledger"), o.ledger)
    ss.add_insert(_sink(t_env, "t_late", LATE_COLUMNS, out / "late"), o.late)
    ss.add_insert(_sink(t_env, "t_invalid", DLQ_COLUMNS, out / "invalid"), o.invalid)
    # the duplicate counts are an upsert stream: record every change as a row
    dup_changes = t_env.to_changelog_stream(o.duplicates).map(
        lambda r: Row(event_id=r[0], duplicates=r[1], op=str(r.get_row_kind())),
        output_type=Types.ROW_NAMED(["event_id", "duplicates", "op"], [Types.STRING(), Types.INT(), Types.STRING()]),
    )
    ss.add_insert(_sink(t_env, "t_dups", [("event_id", "STRING"), ("duplicates", "INT"), ("op", "STRING")],
                        out / "dups"), t_env.from_data_stream(dup_changes))
    if with_reference:
        ref = build_reference(t_env, "events_src", s)
        for name, stream, cols in (
            ("r_windows", ref.windows, [("customer_id", "STRING"), ("meter", "STRING"), ("window_start_ms", "BIGINT"),
                                        ("window_end_ms", "BIGINT"), ("qsum", "STRING"), ("qcount", "BIGINT"),
                                        ("qmax", "STRING"), ("firing", "INT")]),
            ("r_late", ref.late, [("ok", "BOOLEAN"), ("reason", "STRING"), ("event_id", "STRING"),
                                  ("customer_id", "STRING"), ("meter", "STRING"), ("event_time_ms", "BIGINT"),
                                  ("quantity", "STRING")]),
            ("r_invalid", ref.invalid, [("ok", "BOOLEAN"), ("reason", "STRING"), ("event_id", "STRING"),
                                        ("customer_id", "STRING"), ("meter", "STRING"), ("event_time_ms", "BIGINT"),
                                        ("quantity", "STRING")]),
        ):
            ss.add_insert(_sink(t_env, name, cols, out / name), t_env.from_data_stream(stream))
        dup_rows = ref.duplicates.map(lambda e: Row(event_id=e),
                                      output_type=Types.ROW_NAMED(["event_id"], [Types.STRING()]))
        ss.add_insert(_sink(t_env, "r_dups", [("event_id", "STRING")], out / "r_dups"),
                      t_env.from_data_stream(dup_rows))
    ss.execute().wait()
    res = Results(
        ledger=_read(out / "ledger"), late=_read(out / "late"), invalid=_read(out / "invalid"),
    )
    for r in _read(out / "dups"):
        if r["op"] in ("+I", "+U"):
            res.duplicates[r["event_id"]] = max(res.duplicates.get(r["event_id"], 0), r["duplicates"])
    if with_reference:
        res.ref_windows = _read(out / "r_windows")
        res.ref_late = _read(out / "r_late")
        res.ref_invalid = _read(out / "r_invalid")
        res.ref_duplicates = _read(out / "r_dups")
    return res


def _read(folder: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not folder.exists():
        return rows
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            for line in f.read_text(encoding="utf-8").split("\n"):  # not splitlines(): U+2028 is data
                if line.strip():
                    rows.append(json.loads(line, parse_float=Decimal))
    return rows

