"""The advice: a grid of candidate ``[time]`` settings around the configured ones and the
measured disorder, the replay of every candidate (sim.py), and a recommendation in one sentence.

The two targets split the work the way the settings do: the share of LATE events (arriving after
their window was first rated: revisions or re-rating) depends only on the watermark
(``max_out_of_orderness``, idleness); ``allowed_lateness`` only decides which of those late events
are window revisions and which go to re-rating. So the advice is the smallest bound that keeps
the late share under ``late_target``, then the smallest allowed lateness that keeps the
re-rating share under ``rerating_target``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from jobs.batch.watermark_advisor.sim import (
    Arrivals,
    Candidate,
    Outcome,
    Semantics,
    disorder_ms,
    simulate,
)
from schemas.config import Settings

# candidate bounds / lateness are rounded up to one of these (ms)
_LADDER = [0, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000,
           600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 21_600_000, 43_200_000, 86_400_000]


def ms(td: timedelta) -> int:
    return int(td / timedelta(milliseconds=1))


def fmt_ms(x: float) -> str:
    """A duration for people: 0, 250ms, 5s, 2m, 1.5h, 2d; '-' for NaN."""
    if x != x:  # NaN
        return "-"
    sign, x = ("-" if x < 0 else ""), abs(x)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if x >= size:
            v = x / size
            return f"{sign}{v:.0f}{unit}" if v == int(v) or v >= 10 else f"{sign}{v:.1f}{unit}"
    return f"{sign}{x:.0f}ms" if x else "0"


def _nice_up(x: float) -> int:
    for v in _LADDER:
        if v >= x:
            return v
    return int(-(-x // 86_400_000) * 86_400_000)  # whole days


def semantics(settings: Settings, parallelism: int | None = None) -> Semantics:
    """The job's fixed semantics from the settings; ``parallelism``: the source's, when the
    cluster decides it (``flink run -p``) rather than ``[flink] parallelism``."""
    t = settings.time
    return Semantics(watermark_emit=t.watermark_emit, watermark_interval_ms=ms(t.watermark_interval),
                     max_future_skew_ms=ms(t.max_future_skew), dedup_horizon_ms=ms(t.dedup_horizon),
                     parallelism=parallelism or settings.flink.parallelism, topic=settings.topics.events)


@dataclass(frozen=True)
class Grid:
    bounds_ms: tuple[int, ...]
    idleness_ms: tuple[int, ...]
    lateness_ms: tuple[int, ...]
    windows_ms: tuple[int, ...]

    def candidates(self) -> list[Candidate]:
        return [Candidate(b, i, lat, w) for w in self.windows_ms for i in self.idleness_ms
                for b in self.bounds_ms for lat in self.lateness_ms]


def default_grid(arr: Arrivals, settings: Settings, *, bounds: Sequence[int] | None = None,
                 idleness: Sequence[int] | None = None, lateness: Sequence[int] | None = None,
                 windows: Sequence[int] | None = None) -> Grid:
    """The configured value of each setting, plus: bounds at the 90/99/99.9th percentile and the
    maximum of the measured disorder (rounded up to a round duration), lateness from 10 minutes
    to a day. Any list given replaces its default."""
    t = settings.time
    if bounds is None:
        d = disorder_ms(arr)[arr.counted] if len(arr) else np.zeros(0, dtype=np.int64)
        qs = np.percentile(d, [90, 99, 99.9, 100]) if len(d) else []
        bounds = [ms(t.max_out_of_orderness), *(_nice_up(q) for q in qs)]
    if idleness is None:
        idleness = [ms(t.idleness_timeout)]
    if lateness is None:
        lateness = [ms(t.allowed_lateness), 600_000, 3_600_000, 21_600_000, 86_400_000]
    if windows is None:
        windows = [ms(t.window_size)]
    return Grid(*(tuple(sorted(set(int(x) for x in v))) for v in (bounds, idleness, lateness, windows)))


@dataclass(frozen=True)
class Advice:
    outcomes: list[Outcome]
    recommended: Outcome | None
    reasoning: str  # one sentence
    grid: Grid
    disorder_ms: np.ndarray  # per record (see sim.disorder_ms)
    arrivals: Arrivals


def recommend(outcomes: Sequence[Outcome], late_target: float, rerating_target: float,
              window_ms: int) -> tuple[Outcome | None, str]:
    """The smallest bound within the late target, then the smallest allowed lateness within the
    re-rating target (per idleness value; the one rating windows soonest wins)."""
    pool = [o for o in outcomes if o.candidate.window_size_ms == window_ms] or list(outcomes)
    if not pool or pool[0].events == 0:
        return None, "No events in the range: nothing to advise on."
    picks = []
    for idle in sorted({o.candidate.idleness_timeout_ms for o in pool}):
        mine = [o for o in pool if o.candidate.idleness_timeout_ms == idle]
        bounds = sorted({o.candidate.max_out_of_orderness_ms for o in mine})
        b_ok = [b for b in bounds if next(o for o in mine if o.candidate.max_out_of_orderness_ms == b).late_share
                <= late_target]
        b = b_ok[0] if b_ok else bounds[-1]
        at_b = sorted((o for o in mine if o.candidate.max_out_of_orderness_ms == b),
                      key=lambda o: o.candidate.allowed_lateness_ms)
        l_ok = [o for o in at_b if o.beyond_share <= rerating_target]
        pick = l_ok[0] if l_ok else at_b[-1]
        picks.append((bool(b_ok), bool(l_ok), pick))
    picks.sort(key=lambda x: (not (x[0] and x[1]), not x[0], _nan_last(x[2].first_rating_ms["p50"]),
                              -x[2].candidate.idleness_timeout_ms))
    met_late, met_rerate, o = picks[0]
    c = o.candidate
    timing = (f"windows are then first rated {fmt_ms(o.first_rating_ms['p50'])} after they end "
              f"(p95 {fmt_ms(o.first_rating_ms['p95'])})")
    if met_late:
        part1 = (f"max_out_of_orderness = {fmt_ms(c.max_out_of_orderness_ms)} is the smallest candidate that "
                 f"keeps late events at {o.late_share:.2%} (target {late_target:.2%})")
    else:
        part1 = (f"no candidate bound keeps late events under {late_target:.2%}; the largest, "
                 f"max_out_of_orderness = {fmt_ms(c.max_out_of_orderness_ms)}, leaves {o.late_share:.2%}")
    if met_rerate:
        part2 = (f"allowed_lateness = {fmt_ms(c.allowed_lateness_ms)} the smallest that keeps re-rating at "
                 f"{o.beyond_share:.3%} (target {rerating_target:.3%})")
    else:
        part2 = (f"even allowed_lateness = {fmt_ms(c.allowed_lateness_ms)} sends {o.beyond_share:.3%} to "
                 f"re-rating (target {rerating_target:.3%})")
    return o, f"With this traffic, {part1}, and {part2}; {timing}."


def _nan_last(x: float) -> float:
    return float("inf") if x != x else x


def advise(arr: Arrivals, settings: Settings, grid: Grid, *, late_target: float = 0.01,
           rerating_target: float = 0.001, parallelism: int | None = None) -> Advice:
    outcomes = simulate(arr, grid.candidates(), semantics(settings, parallelism))
    rec, why = recommend(outcomes, late_target, rerating_target, ms(settings.time.window_size))
    return Advice(outcomes=outcomes, recommended=rec, reasoning=why, grid=grid,
                  disorder_ms=disorder_ms(arr), arrivals=arr)


def table_rows(advice: Advice) -> list[dict[str, object]]:
    """One row per candidate, for the terminal table, the HTML report and advice.json."""
    rows = []
    for o in advice.outcomes:
        c = o.candidate
        rows.append({
            "recommended": o is advice.recommended,
            "max_out_of_orderness": fmt_ms(c.max_out_of_orderness_ms),
            "idleness_timeout": fmt_ms(c.idleness_timeout_ms),
            "allowed_lateness": fmt_ms(c.allowed_lateness_ms),
            "window_size": fmt_ms(c.window_size_ms),
            "events": o.events, "on_time": o.on_time, "late_within": o.late_within, "beyond": o.beyond,
            "late_share": o.late_share, "beyond_share": o.beyond_share,
            "first_rating_p50": fmt_ms(o.first_rating_ms["p50"]),
            "first_rating_p95": fmt_ms(o.first_rating_ms["p95"]),
            "final_p50": fmt_ms(o.final_ms["p50"]),
            "unrated_windows": o.unrated_windows,
            "open_windows_peak": o.open_windows_peak,
            "dedup_entries_peak": o.dedup_entries_peak,
        })
    return rows
