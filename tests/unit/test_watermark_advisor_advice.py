"""The advisor's grid, recommendation, report files and command line (no stack needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cli.watermarks import watermarks_app
from jobs.batch.watermark_advisor.advise import Grid, advise, default_grid, fmt_ms, recommend
from jobs.batch.watermark_advisor.report import write_report
from jobs.batch.watermark_advisor.sim import Arrivals, Candidate, Outcome
from schemas.config import load_settings


def _traffic(n: int = 20_000, seed: int = 3) -> Arrivals:
    rng = np.random.default_rng(seed)
    clock = np.cumsum(rng.integers(0, 400, n)) + 1_790_000_000_000
    lag = rng.exponential(1500, n).astype(np.int64)
    lag[rng.random(n) < 0.003] += 3_600_000 * 3  # a few hours-late stragglers
    return Arrivals.from_columns(partition=rng.integers(0, 4, n), offset=np.arange(n), clock_ms=clock,
                                 event_ms=clock - lag, key=rng.integers(0, 50, n))


def _outcome(b: int, lat: int, late: float, beyond: float, p50: float = 1000.0) -> Outcome:
    n = 10_000
    return Outcome(Candidate(b, 30_000, lat, 3_600_000), n, n - int(n * late), int(n * (late - beyond)),
                   int(n * beyond), 1, {"p50": p50, "p95": p50, "max": p50}, {"p50": 0, "p95": 0, "max": 0},
                   0, 0, 0, np.zeros(0))


def test_the_smallest_bound_within_the_late_target_then_the_smallest_lateness_within_re_rating() -> None:
    outs = [_outcome(b, lat, late, beyond) for b, late in ((1000, 0.05), (5000, 0.008), (30000, 0.002))
            for lat, beyond in ((600_000, min(late, 0.004)), (3_600_000, min(late, 0.0005)))]
    o, why = recommend(outs, 0.01, 0.001, 3_600_000)
    assert (o.candidate.max_out_of_orderness_ms, o.candidate.allowed_lateness_ms) == (5000, 3_600_000)
    assert why.startswith("With this traffic, max_out_of_orderness = 5s is the smallest")
    assert "allowed_lateness = 1h" in why
    o, why = recommend(outs, 0.001, 0.001, 3_600_000)  # unreachable late target: the largest bound
    assert o.candidate.max_out_of_orderness_ms == 30000 and "no candidate bound" in why.lower()


def test_advice_report_and_grid(tmp_path: Path) -> None:
    settings = load_settings()
    arr = _traffic()
    grid = default_grid(arr, settings)
    assert 5000 in grid.bounds_ms and len(grid.bounds_ms) >= 3 and grid.windows_ms == (3_600_000,)
    adv = advise(arr, settings, grid, late_target=0.01, rerating_target=0.001)
    assert adv.recommended is not None and len(adv.outcomes) == len(grid.candidates())
    files = write_report(adv, tmp_path / "out", title="t", source="synthetic")
    html = files["report"].read_text()
    assert html.count("data:image/png;base64,") == 2 and adv.reasoning.split(";")[0] in html
    assert files["delay"].read_bytes()[:4] == b"\x89PNG" and files["tradeoff"].stat().st_size > 10_000


def test_fmt_ms() -> None:
    got = [fmt_ms(x) for x in (0, 250, 5000, 90_000, 3_600_000, float("nan"))]
    assert got == ["0", "250ms", "5s", "1.5m", "1h", "-"]


@pytest.mark.parametrize("args, message", [
    (["--late-target", "2"], "--late-target '2' must be between 0 and 1"),
    (["--bounds", "5 parsecs"], "--bounds"),
    (["--windows", "7m"], "--windows"),
    (["--period", "2026-13"], "period '2026-13' must be YYYY-MM"),
    (["--from", "yesterday"], "--from 'yesterday' is not an ISO 8601 time"),
    (["--from", "2026-11-02", "--to", "2026-11-01"], "must be after"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    app = typer.Typer()
    app.add_typer(watermarks_app, name="watermarks")
    r = CliRunner().invoke(app, ["watermarks", "advise", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_grid_candidates_cover_every_combination() -> None:
    g = Grid((0, 1000), (30_000,), (600_000, 3_600_000), (3_600_000,))
    assert len(g.candidates()) == 4
