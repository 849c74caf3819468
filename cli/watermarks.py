"""``meterflow watermarks advise``: what would other ``[time]`` settings do with my traffic?

Replays measured arrivals (``usage_events`` or the events topic) through the metering job's
watermark and lateness semantics for a grid of candidate settings
(jobs/batch/watermark_advisor/), prints the table and the recommendation, and writes the charts
and an HTML report. Mount (cli/app.py)::

    from cli.watermarks import watermarks_app
    app.add_typer(watermarks_app, name="watermarks")
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from cli.options import EXIT_USAGE, ConfigOpt, clear_errors, console, fail_text, settings_or_exit
from schemas.config import parse_duration

watermarks_app = typer.Typer(help="Event-time settings, measured against your own traffic.",
                             no_args_is_help=True)


class Source(str, Enum):  # noqa: UP042 - typer's choices
    postgres = "postgres"
    kafka = "kafka"


def _fail(msg: str) -> NoReturn:
    fail_text(msg, EXIT_USAGE)


def _durations(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [0 if x.strip() == "0" else int(parse_duration(x.strip()) / timedelta(milliseconds=1))
                for x in text.split(",") if x.strip()]
    except (ValueError, TypeError) as e:
        _fail(f"{name}: {e}".splitlines()[0])


def _share(text: str, name: str) -> float:
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        _fail(f"{name} {text!r} must be a share, e.g. 0.01 or 1%")
    if not 0 <= v <= 1:
        _fail(f"{name} {text!r} must be between 0 and 1 (or 0% and 100%)")
    return v


@watermarks_app.command("advise")
def advise_cmd(
    config: ConfigOpt = None,
    source: Annotated[Source, typer.Option("--source", help="postgres: accepted events in usage_events "
                                           "(by ingestion time); kafka: every record of the events topic")]
    = Source.postgres,
    from_: Annotated[str | None, typer.Option("--from", help="start (ISO 8601, UTC if no offset)")] = None,
    to: Annotated[str | None, typer.Option("--to", help="end, exclusive")] = None,
    period: Annotated[str | None, typer.Option("--period", help="a month, YYYY-MM (instead of --from/--to)")]
    = None,
    bounds: Annotated[str | None, typer.Option("--bounds", help="candidate max_out_of_orderness, e.g. "
                                                  "'1s,5s,30s,2m' (default: configured + measured percentiles)")]
    = None,
    idleness: Annotated[str | None, typer.Option("--idleness", help="candidate idleness_timeout list")] = None,
    lateness: Annotated[str | None, typer.Option("--lateness", help="candidate allowed_lateness list")] = None,
    windows: Annotated[str | None, typer.Option("--windows", help="candidate window_size list")] = None,
    late_target: Annotated[str, typer.Option("--late-target", help="largest acceptable share of late events "
                                             "(revisions + re-rating)")] = "1%",
    rerating_target: Annotated[str, typer.Option("--rerating-target", help="largest acceptable share of "
                                                 "events sent to re-rating")] = "0.1%",
    parallelism: Annotated[int | None, typer.Option("--parallelism", min=1, help="the metering job's source "
                                                      "parallelism (default: [flink] parallelism); every "
                                                      "reader has its own watermark")] = None,
    out: Annotated[Path, typer.Option("--out", help="directory for the charts, advice.json and report.html")]
    = Path(".local/watermark-advice"),
) -> None:
    """Replay a time range of real traffic through the job's watermark semantics for a grid of
    candidate settings; print what each would do and recommend one."""
    from jobs.batch.watermark_advisor.advise import advise, default_grid
    from jobs.batch.watermark_advisor.report import write_report
    from jobs.batch.watermark_advisor.sim import no_transparent_hugepages
    from jobs.batch.watermark_advisor.sources import from_kafka, from_postgres, parse_range

    no_transparent_hugepages()

    settings = settings_or_exit(config)
    late_t, rerate_t = _share(late_target, "--late-target"), _share(rerating_target, "--rerating-target")
    lists = {k: _durations(v, f"--{k}") for k, v in
             (("bounds", bounds), ("idleness", idleness), ("lateness", lateness), ("windows", windows))}
    for w in lists["windows"] or ():
        if w <= 0 or 86_400_000 % w or w % 1000:
            _fail(f"--windows: {w} ms must be whole seconds that divide 24 hours")
    if any(x < 0 for v in lists.values() if v for x in v):
        _fail("durations must not be negative")
    try:
        start, end = parse_range(from_, to, period, datetime.now(UTC))
    except ValueError as e:
        _fail(str(e))
    whole_topic = source is Source.kafka and not (from_ or to or period)
    t0 = time.perf_counter()
    try:
        with clear_errors(settings):  # Postgres / Kafka unreachable, no schema: one line, exit 1
            if source is Source.postgres:
                arr = from_postgres(settings, start, end)
            else:
                arr = from_kafka(settings, None if whole_topic else start, None if whole_topic else end)
    except ValueError as e:  # e.g. no such topic
        _fail(str(e))
    t_read = time.perf_counter() - t0
    where = (f"{source.value}: the whole topic {settings.topics.events}" if whole_topic
             else f"{source.value}: {start.isoformat()} .. {end.isoformat()}")
    if len(arr) == 0 or not arr.counted.any():
        _fail(f"no events in {where}")
    grid = default_grid(arr, settings, bounds=lists["bounds"], idleness=lists["idleness"],
                        lateness=lists["lateness"], windows=lists["windows"])
    t1 = time.perf_counter()
    adv = advise(arr, settings, grid, late_target=late_t, rerating_target=rerate_t, parallelism=parallelism)
    t_sim = time.perf_counter() - t1
    files = write_report(adv, out, title="meterflow watermark advice",
                         source=f"{where}; {int(arr.counted.sum()):,} events in {len(arr.partitions)} partitions; "
                                f"watermarks {settings.time.watermark_emit}, "
                                f"{parallelism or settings.flink.parallelism} source reader(s)")
    print_table(adv, where, len(arr), t_read, t_sim)
    console.print(f"report: {files['report']}  (charts: {files['delay'].name}, {files['tradeoff'].name}; "
                  f"table: {files['json'].name})")


_SHORT = [("max_out_of_orderness", "bound"), ("idleness_timeout", "idle"), ("allowed_lateness", "lateness"),
          ("window_size", "window"), ("on_time", "on time"), ("late_within", "late"), ("beyond", "beyond"),
          ("late_share", "late %"), ("beyond_share", "re-rate %"), ("first_rating_p50", "rated p50"),
          ("first_rating_p95", "p95"), ("final_p50", "final p50"), ("open_windows_peak", "open win"),
          ("dedup_entries_peak", "dedup ids")]


def print_table(adv, where: str, records: int, t_read: float, t_sim: float) -> None:
    """The candidates, one row each (``*`` the recommended one); a setting with one candidate
    value goes into the title instead of a column."""
    from jobs.batch.watermark_advisor.advise import table_rows
    from jobs.batch.watermark_advisor.report import cell

    rows = table_rows(adv)
    fixed = [(k, h) for k, h in _SHORT[:4] if len({r[k] for r in rows}) == 1]
    cols = [(k, h) for k, h in _SHORT if (k, h) not in fixed]
    title = f"watermark advice — {where}" + "".join(f"; {h} {rows[0][k]}" for k, h in fixed)
    t = Table(title=title, title_justify="left")
    t.add_column("")
    for _, h in cols:
        t.add_column(h, justify="right", no_wrap=True)
    for r in rows:
        t.add_row("*" if r["recommended"] else "", *(cell(r, k) for k, _ in cols),
                  style="bold" if r["recommended"] else None)
    # a pipe or a CI log is not a terminal: rich would squeeze the table into 80 columns
    (console if console.is_terminal else Console(width=170)).print(t)
    console.print(f"[bold]recommendation:[/] {adv.reasoning}")
    console.print(f"{records:,} records read in {t_read:.1f} s, {len(adv.outcomes)} settings replayed in {t_sim:.1f} s")
