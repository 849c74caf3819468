"""The advice as pictures: the disorder and the arrival delay per partition with the candidate
bounds drawn on them, the trade-off between late events and time to first rating; PNG files and
one self-contained HTML report that embeds them (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jobs.batch.watermark_advisor.advise import Advice, fmt_ms, table_rows

MAX_PARTITIONS_DRAWN = 12  # the busiest ones; the rest are summed into "others"
_SAMPLE = 200_000  # points per curve at most (the tail is kept whole)


def _survival(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of values > v, for sorted v (a subsample of the body, the whole top 1 %)."""
    x = np.sort(x)
    n = len(x)
    if n > _SAMPLE:
        cut = int(n * 0.99)
        idx = np.r_[np.linspace(0, cut - 1, _SAMPLE // 2).astype(np.int64), np.arange(cut, n)]
        x, pos = x[idx], idx
    else:
        pos = np.arange(n)
    return x, 1.0 - (pos + 1) / n


def delay_chart(advice: Advice, path: Path) -> Path:
    arr = advice.arrivals
    mask = arr.counted
    parts, counts = np.unique(arr.partition[mask], return_counts=True)
    shown = parts[np.argsort(-counts)][:MAX_PARTITIONS_DRAWN]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    series = [
        ("behind the partition's largest event time so far\n(what max_out_of_orderness must cover)",
         advice.disorder_ms),
        ("arrival delay: arrival time - event time", arr.clock_ms - arr.event_ms),
    ]
    floor = 0.5 / max(int(mask.sum()), 1)  # the last point of a survival curve is 0: draw it here
    for ax, (title, values) in zip(axes, series, strict=True):
        for p in shown:
            v = values[mask & (arr.partition == p)] / 1000.0
            xs, ys = _survival(np.maximum(v, 1e-3))
            ax.step(xs, np.maximum(ys, floor), where="post", label=f"partition {p}", linewidth=1)
        rest = mask & ~np.isin(arr.partition, shown)
        if rest.any():
            xs, ys = _survival(np.maximum(values[rest] / 1000.0, 1e-3))
            ax.step(xs, np.maximum(ys, floor), where="post", label="other partitions", linewidth=1, color="grey")
        for b in advice.grid.bounds_ms:
            rec = advice.recommended is not None and advice.recommended.candidate.max_out_of_orderness_ms == b
            ax.axvline(max(b / 1000.0, 1e-3), color="crimson" if rec else "black", linestyle="-" if rec else ":",
                       linewidth=1.5 if rec else 0.8)
            ax.annotate(fmt_ms(b), (max(b / 1000.0, 1e-3), 1.0), rotation=90, fontsize=7, va="top", ha="right")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set_xlabel("seconds")
        ax.set_ylabel("share of events with more")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Event-time disorder per partition; dotted: candidate max_out_of_orderness, red: recommended")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tradeoff_chart(advice: Advice, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    rec = advice.recommended
    window = rec.candidate.window_size_ms if rec else advice.grid.windows_ms[0]
    lat = rec.candidate.allowed_lateness_ms if rec else advice.grid.lateness_ms[0]
    for idle in advice.grid.idleness_ms:
        pts = sorted((o for o in advice.outcomes if o.candidate.window_size_ms == window
                      and o.candidate.idleness_timeout_ms == idle and o.candidate.allowed_lateness_ms == lat),
                     key=lambda o: o.candidate.max_out_of_orderness_ms)
        xs = [o.first_rating_ms["p50"] / 1000.0 for o in pts]
        ys = [o.late_share * 100 for o in pts]
        ax.plot(xs, ys, marker="o", label=f"idleness {fmt_ms(idle)}")
        for o, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(fmt_ms(o.candidate.max_out_of_orderness_ms), (x, y), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
    if rec is not None:
        ax.plot([rec.first_rating_ms["p50"] / 1000.0], [rec.late_share * 100], marker="*", markersize=16,
                color="crimson", linestyle="none", label="recommended")
    ax.set_xlabel("median time from window end to first rating (s)")
    ax.set_ylabel("late events (% of accepted: revisions + re-rating)")
    ax.set_title(f"Trade-off per max_out_of_orderness (window {fmt_ms(window)})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_COLUMNS = [("max_out_of_orderness", "bound"), ("idleness_timeout", "idleness"), ("allowed_lateness", "lateness"),
            ("window_size", "window"), ("on_time", "on time"), ("late_within", "late (revisions)"),
            ("beyond", "beyond (re-rating)"), ("late_share", "late %"), ("beyond_share", "re-rating %"),
            ("first_rating_p50", "first rating p50"), ("first_rating_p95", "p95"), ("final_p50", "final p50"),
            ("open_windows_peak", "open windows (peak)"), ("dedup_entries_peak", "dedup entries (peak)")]


def cell(row: dict, key: str) -> str:
    v = row[key]
    if key.endswith("_share"):
        return f"{v:.3%}"
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def write_report(advice: Advice, out: Path, *, title: str, source: str) -> dict[str, Path]:
    """PNG charts, advice.json and report.html (charts embedded) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    delay = delay_chart(advice, out / "delay_per_partition.png")
    trade = tradeoff_chart(advice, out / "tradeoff.png")
    rows = table_rows(advice)
    (out / "advice.json").write_text(json.dumps({
        "source": source, "recommendation": advice.reasoning, "rows": rows}, indent=2) + "\n")

    def img(p: Path) -> str:
        return f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'

    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in _COLUMNS)
    body = "".join(
        f"<tr{' class=rec' if r['recommended'] else ''}>"
        + "".join(f"<td>{html.escape(cell(r, k))}</td>" for k, _ in _COLUMNS) + "</tr>" for r in rows)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} tr.rec{{background:#fde2e2;font-weight:bold}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(source)}</p>
<p><strong>Recommendation:</strong> {html.escape(advice.reasoning)}</p>
{img(delay)}
{img(trade)}
<h2>Every candidate</h2>
<table><tr>{head}</tr>{body}</table>
<p>late %: events that arrive after their window was first rated (revisions + re-rating), which only
the watermark decides; re-rating %: the part of them beyond allowed lateness. Times are from the
window's end, by arrival (ingestion) time. Open windows: key-windows holding on-time state in the
job at once; dedup entries: event ids within max(dedup_horizon, allowed_lateness).</p>
</body></html>
"""
    report = out / "report.html"
    report.write_text(page)
    return {"report": report, "delay": delay, "tradeoff": trade, "json": out / "advice.json"}
