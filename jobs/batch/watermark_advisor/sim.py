"""Replay measured arrivals through the metering job's event-time semantics, for a grid of
candidate ``[time]`` settings, without running Flink: pure and vectorised (numpy), no Python
loop per event (a loop per partition and per setting only).

What is reproduced, and where it lives in the job (jobs/flink/metering.py) and in Flink:

* Each Kafka partition is a split with its own watermark generator (watermark push-down into the
  Kafka source): ``WATERMARK FOR rowtime AS NULLIF(LEAST(rowtime, now + max_future_skew), …) -
  max_out_of_orderness``. The SQL generator keeps the largest value seen
  (``GeneratedWatermarkGeneratorSupplier.DefaultWatermarkGenerator``: no ``- 1 ms``, unlike the
  DataStream ``BoundedOutOfOrdernessWatermarks``) and, with ``on-event`` emission, emits only when
  that value grows. An event at or beyond ``max_future_skew`` contributes nothing; an unreadable
  time is the epoch (it never raises the watermark).
* The source's watermark is the minimum over its non-idle splits, and never goes back
  (``CombinedWatermarkStatus``): ``combined = running max of min(active partitions)``; all idle:
  unchanged.
* Idleness (``WatermarksWithIdleness``): a split with no record for ``idleness_timeout`` of wall
  time is idle. It becomes active again when a watermark is emitted for it: with ``on-event``
  only by a record that raises its watermark; with ``periodic`` at the next periodic emission
  after any record (modelled as right after that record). A split that has had no record at all
  holds the watermark at its minimum until it goes idle: every partition counts from the first
  arrival of the replay.
* A parallel source has one such watermark per reader, over the partitions the Kafka connector
  assigns it (:func:`split_owner`); the classifier sits in the reader's chain and sees that one.
* Every record first leaves the source, then its watermark update: an event is classified
  against the watermark BEFORE its own (``SourceOutputWithWatermarks.collect``). The
  classification is the job's (docs/ARCHITECTURE.md §2), ``end`` the window end, ``L`` the
  allowed lateness: ``end - 1 + L <= wm`` beyond, ``end - 1 <= wm`` late within, else on time; no
  watermark yet: on time. Only an accepted event's first copy is counted (keep-first dedup);
  duplicates and rejected records still move the watermark.
* A window is first rated when the watermark reaches ``end - 1`` (the window operator's timer),
  final when it reaches ``end - 1 + L`` (no revision can follow).

Wall time ("clock") is the arrival time: the ingestion time in ``usage_events`` or the Kafka
record timestamp. With ``on-event`` emission and no idleness in play the verdicts are exactly the
job's for a given arrival order (tests/integration/test_watermark_advisor_job.py). What is
modelled, not reproduced: when idleness sets in (Flink: between the timeout and the timeout plus
three watermark intervals), the ``periodic`` emission delay (the watermark an event sees is the
one of the last ``watermark_interval`` tick before it), and how a reader interleaves partitions
(the replay interleaves them by arrival time, keeping each partition's offset order).

Because every partition's watermark is ``max(event time) - bound``, the combined watermark for a
bound ``b`` is the bound-free one minus ``b`` as long as idleness is the same: one pass over the
arrivals per idleness value serves every bound, window size and allowed lateness.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

NEG = np.int64(-(2**62))  # "no watermark yet" (Flink: Long.MIN_VALUE), far from overflow
POS = np.int64(2**62)
_CHUNK = 1 << 20  # merged-timeline positions per block (memory: partitions x chunk x 8 bytes)


@dataclass(frozen=True)
class Arrivals:
    """Records in arrival order (see :meth:`from_columns`), every one the source read.

    ``event_ms`` is the record's rowtime (ms; the epoch when unreadable), ``clock_ms`` its arrival
    (wall) time, ``counted`` marks the accepted first copies (the events that are classified),
    ``key`` an integer per (customer, meter) for window state (``None``: one key)."""

    partition: np.ndarray  # int64
    offset: np.ndarray  # int64
    clock_ms: np.ndarray  # int64, non-decreasing
    event_ms: np.ndarray  # int64
    counted: np.ndarray  # bool
    key: np.ndarray | None = None  # int64
    partitions: tuple[int, ...] = ()  # every partition of the topic, also those with no record

    @classmethod
    def from_columns(cls, *, partition: Iterable[int], offset: Iterable[int], clock_ms: Iterable[int],
                     event_ms: Iterable[int], counted: Iterable[bool] | None = None,
                     key: Iterable[int] | None = None, partitions: Iterable[int] = ()) -> Arrivals:
        """Put records into the order the job reads them: each partition in offset order, the
        partitions interleaved by arrival time. A partition's arrival times are made
        non-decreasing in offset order first (a record cannot be read before the one before it)."""
        p = np.asarray(partition, dtype=np.int64)
        o = np.asarray(offset, dtype=np.int64)
        c = np.asarray(clock_ms, dtype=np.int64)
        e = np.asarray(event_ms, dtype=np.int64)
        n = len(p)
        cnt = np.ones(n, dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
        k = None if key is None else np.asarray(key, dtype=np.int64)
        if not (len(o) == len(c) == len(e) == len(cnt) == n) or (k is not None and len(k) != n):
            raise ValueError("all columns must have the same length")
        order, c = arrival_order(p, o, c)
        p, o, e, cnt = p[order], o[order], e[order], cnt[order]
        k = None if k is None else k[order]
        parts = tuple(sorted(set(int(x) for x in np.unique(p)) | set(int(x) for x in partitions)))
        return cls(partition=p, offset=o, clock_ms=c, event_ms=e, counted=cnt, key=k, partitions=parts)

    def __len__(self) -> int:
        return len(self.partition)


def arrival_order(partition: np.ndarray, offset: np.ndarray,
                  clock_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The permutation that puts records into reading order, and their arrival times in that
    order: each partition in offset order, its arrival times made non-decreasing (a record is
    not read before the one before it), the partitions interleaved by arrival time."""
    p = np.asarray(partition, dtype=np.int64)
    o = np.asarray(offset, dtype=np.int64)
    c = np.asarray(clock_ms, dtype=np.int64)
    n = len(p)
    by_po = np.lexsort((o, p))
    c = c[by_po]
    if n:
        ps = p[by_po]
        starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
        # running max within each partition: lift each partition above the previous one's range
        rank = np.repeat(np.arange(len(starts), dtype=np.int64), np.diff(np.r_[starts, n]))
        lo = c.min()
        span = np.int64(c.max() - lo + 1)
        c = np.maximum.accumulate(rank * span + (c - lo)) - rank * span + lo
    o2 = np.lexsort((o[by_po], p[by_po], c))
    return by_po[o2], c[o2]


@dataclass(frozen=True)
class Semantics:
    """The settings that shape the watermark but are not part of the grid."""

    watermark_emit: str = "on-event"  # or "periodic"
    watermark_interval_ms: int = 200
    max_future_skew_ms: int = 300_000
    dedup_horizon_ms: int = 2 * 86_400_000
    # the source's parallelism and topic: which reader owns which partition (split_owner)
    parallelism: int = 1
    topic: str = ""


def split_owner(topic: str, partition: int, readers: int) -> int:
    """The source subtask that reads ``partition`` (the Kafka connector's
    ``KafkaSourceEnumerator.getSplitOwner``: round robin from a start index given by the topic
    name's Java ``hashCode``)."""
    h = 0
    for unit in topic.encode("utf-16-be").hex(" ", 2).split():  # Java strings hash UTF-16 units
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    start = ((h * 31) & 0xFFFFFFFF & 0x7FFFFFFF) % readers
    return (start + partition) % readers


@dataclass(frozen=True)
class Candidate:
    max_out_of_orderness_ms: int
    idleness_timeout_ms: int
    allowed_lateness_ms: int
    window_size_ms: int


@dataclass(frozen=True)
class Outcome:
    """What one candidate setting does to the replayed traffic."""

    candidate: Candidate
    events: int  # counted (accepted first copies)
    on_time: int
    late_within: int  # window revisions
    beyond: int  # re-rating
    windows: int  # distinct windows (by start) with a counted event not beyond lateness
    first_rating_ms: dict[str, float]  # p50 / p95 / max of (first rating - window end)
    final_ms: dict[str, float]  # p50 / p95 / max of (final - window end)
    unrated_windows: int  # never rated within the replay (the watermark did not reach them)
    open_windows_peak: int  # key-windows holding on-time state at once (first event -> firing)
    dedup_entries_peak: int  # event ids within max(dedup_horizon, allowed_lateness) of wall time
    # per record (only with simulate(verdicts=True)): 0 on time, 1 late, 2 beyond, -1 not counted
    verdicts: np.ndarray = field(repr=False, compare=False)

    @property
    def late_share(self) -> float:
        return (self.late_within + self.beyond) / self.events if self.events else 0.0

    @property
    def beyond_share(self) -> float:
        return self.beyond / self.events if self.events else 0.0


@dataclass(frozen=True)
class Watermarks:
    """The bound-free combined watermark for one idleness value: ``before[i]`` is the watermark
    record ``i`` is classified against; ``timeline_clock`` / ``timeline_wm`` the combined
    watermark after every step (records and idleness), non-decreasing, for firing times."""

    before: np.ndarray
    timeline_clock: np.ndarray
    timeline_wm: np.ndarray


def combined_watermark(arr: Arrivals, idleness_ms: int, sem: Semantics) -> Watermarks:
    """The source's watermark with ``max_out_of_orderness = 0`` (subtract the bound for any
    other): see the module docstring for the rules. With a parallel source every reader has its
    own, over the partitions it owns (:func:`split_owner`), and classifies its records against
    it; the firing timeline is then the one over all partitions (the window operator takes the
    minimum over the readers: modelled, not reproduced)."""
    n = len(arr)
    if n == 0:
        e = np.empty(0, dtype=np.int64)
        return Watermarks(e, e, e)
    t0, t_end = int(arr.clock_ms[0]), int(arr.clock_ms[-1])
    whole = _combined(arr, idleness_ms, sem, t0, t_end)
    if sem.parallelism <= 1 or len(arr.partitions) <= 1:
        return whole
    owner = {p: split_owner(sem.topic, p, sem.parallelism) for p in arr.partitions}
    before = np.empty(n, dtype=np.int64)
    for reader in sorted(set(owner.values())):
        parts = tuple(p for p in arr.partitions if owner[p] == reader)
        mask = np.isin(arr.partition, parts)
        if not mask.any():
            continue
        sub = Arrivals(partition=arr.partition[mask], offset=arr.offset[mask], clock_ms=arr.clock_ms[mask],
                       event_ms=arr.event_ms[mask], counted=arr.counted[mask], partitions=parts)
        before[mask] = _combined(sub, idleness_ms, sem, t0, t_end).before
    return Watermarks(before=before, timeline_clock=whole.timeline_clock, timeline_wm=whole.timeline_wm)


def _combined(arr: Arrivals, idleness_ms: int, sem: Semantics, t0: int, t_end: int) -> Watermarks:
    """One reader's watermark over ``arr.partitions`` (every split registered at ``t0``)."""
    n = len(arr)
    clock, part = arr.clock_ms, arr.partition
    future = arr.event_ms >= clock + sem.max_future_skew_ms
    contrib = np.where(future, NEG, arr.event_ms)
    on_event = sem.watermark_emit == "on-event"

    per_part = []  # (partition, its record indices, running max, idle-start times, reactivation idx)
    ticks_t, ticks_p = [], []
    for pi, p in enumerate(arr.partitions):
        idx = np.flatnonzero(part == p)
        vals = contrib[idx]
        runmax = np.maximum.accumulate(vals) if len(idx) else vals
        prev = np.r_[NEG, runmax[:-1]] if len(idx) else runmax
        raises = vals > prev
        g = np.empty(0, dtype=np.int64)
        react = np.empty(0, dtype=np.int64)
        if idleness_ms > 0:
            act = np.r_[t0, clock[idx]]  # activity: the replay's start, then every record
            nxt = np.r_[act[1:], POS]
            gap = np.flatnonzero(nxt - act > idleness_ms)
            g = act[gap] + idleness_ms
            keep = g <= t_end
            gap, g = gap[keep], g[keep]
            # the record that ends the idleness: the first after the gap (periodic), or the first
            # after it that raises the partition's watermark (on-event)
            cand = np.flatnonzero(raises) if on_event else np.arange(len(idx))
            j = np.searchsorted(cand, gap, side="left")  # gap k is followed by record index gap[k]
            react = np.where(j < len(cand), idx[cand[np.minimum(j, len(cand) - 1)]] if len(cand) else -1, -1)
            ticks_t.append(g)
            ticks_p.append(np.full(len(g), pi, dtype=np.int64))
        per_part.append((idx, runmax, g, react))

    # merged timeline: records in order, an idleness tick after every record at or before its time
    tt = np.concatenate(ticks_t) if ticks_t else np.empty(0, dtype=np.int64)
    tp = np.concatenate(ticks_p) if ticks_p else np.empty(0, dtype=np.int64)
    o = np.argsort(tt, kind="stable")
    tt, tp = tt[o], tp[o]
    ins = np.searchsorted(clock, tt, side="right")
    tick_pos = ins + np.arange(len(tt))
    rec_pos = np.arange(n) + np.searchsorted(ins, np.arange(n), side="right")
    m = n + len(tt)
    tl_clock = np.empty(m, dtype=np.int64)
    tl_clock[rec_pos] = clock
    tl_clock[tick_pos] = tt

    # per partition, sparse updates on the timeline: watermark values and idle/active switches
    wm_at, st_at = [], []
    for pi, (idx, runmax, _g, react) in enumerate(per_part):
        wm_at.append((rec_pos[idx], runmax))
        mine = tick_pos[tp == pi]  # ticks of this partition, in time order = in g order
        rp = np.unique(rec_pos[react[react >= 0]])  # two gaps may end at the same record
        pos = np.r_[mine, rp]
        val = np.r_[np.ones(len(mine), dtype=np.int8), np.zeros(len(rp), dtype=np.int8)]
        o2 = np.argsort(pos, kind="stable")
        st_at.append((pos[o2], val[o2]))

    combined = np.empty(m, dtype=np.int64)
    carry_wm = [NEG] * len(per_part)
    carry_idle = [np.int8(0)] * len(per_part)
    carry_comb = NEG
    for lo in range(0, m, _CHUNK):
        hi = min(m, lo + _CHUNK)
        size = hi - lo
        best = np.full(size, POS, dtype=np.int64)
        any_active = np.zeros(size, dtype=bool)
        for pi in range(len(per_part)):
            pos, vals = wm_at[pi]
            a, b = np.searchsorted(pos, [lo, hi])
            w = np.full(size, NEG, dtype=np.int64)
            w[pos[a:b] - lo] = vals[a:b]
            w[0] = max(w[0], carry_wm[pi])
            np.maximum.accumulate(w, out=w)
            carry_wm[pi] = w[-1]
            spos, sval = st_at[pi]
            a, b = np.searchsorted(spos, [lo, hi])
            if b > a:
                last = np.full(size, -1, dtype=np.int64)
                last[spos[a:b] - lo] = np.arange(a, b)
                np.maximum.accumulate(last, out=last)
                idle = np.where(last >= 0, sval[np.maximum(last, 0)], carry_idle[pi]).astype(bool)
                carry_idle[pi] = np.int8(idle[-1])
            else:
                idle = np.full(size, bool(carry_idle[pi]))
            active = ~idle
            np.minimum(best, np.where(active, w, POS), out=best)
            any_active |= active
        step = np.where(any_active, best, NEG)
        step[0] = max(step[0], carry_comb)
        np.maximum.accumulate(step, out=step)
        carry_comb = step[-1]
        combined[lo:hi] = step

    if on_event:
        # the watermark a record meets is the one after everything before it on the timeline
        before = np.where(rec_pos > 0, combined[np.maximum(rec_pos - 1, 0)], NEG)
    else:
        # the last periodic emission before the record: everything before that tick
        tick = (clock // sem.watermark_interval_ms) * sem.watermark_interval_ms
        k = np.searchsorted(tl_clock, tick, side="left")
        before = np.where(k > 0, combined[np.maximum(k - 1, 0)], NEG)
    return Watermarks(before=before, timeline_clock=tl_clock, timeline_wm=combined)


def no_transparent_hugepages() -> None:
    """Stop numpy from asking the kernel for transparent huge pages for large arrays (its default
    on Linux). On a busy machine the kernel compacts memory to find them: measured here, 3x the
    user time again as system time (10 M records: 23 s CPU with, 7 s without). Process-wide, so
    called by the entry points (the CLI, the benchmark), not by the library."""
    from numpy._core import multiarray

    setter = getattr(multiarray, "_set_madvise_hugepage", None)  # private: absent, nothing to do
    if setter is not None:
        setter(False)


def classify(arr: Arrivals, wm_before: np.ndarray, bound_ms: int, window_ms: int,
             lateness_ms: int) -> np.ndarray:
    """Per record: 0 on time, 1 late within lateness, 2 beyond, -1 not counted."""
    start = arr.event_ms - np.mod(arr.event_ms, window_ms)
    wm = np.where(wm_before > NEG, wm_before - bound_ms, NEG)
    end1 = start + (window_ms - 1)
    v = np.where(end1 + lateness_ms <= wm, 2, np.where(end1 <= wm, 1, 0)).astype(np.int8)
    v[~arr.counted] = -1
    return v


def _percentiles(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    p50, p95 = np.percentile(x, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "max": float(x.max())}


def _crossing_clock(wms: Watermarks, threshold: np.ndarray) -> np.ndarray:
    """Wall time at which the (non-decreasing) combined watermark first reaches ``threshold``;
    -1 where it never does within the replay."""
    i = np.searchsorted(wms.timeline_wm, threshold, side="left")
    ok = i < len(wms.timeline_wm)
    return np.where(ok, wms.timeline_clock[np.minimum(i, len(wms.timeline_wm) - 1)], -1)


def _peak_open(starts: np.ndarray, ends: np.ndarray) -> int:
    """Most intervals [start, end) open at once; ``starts`` sorted, end -1: open to the end. A
    close and an open at the same instant: the close first."""
    if len(starts) == 0:
        return 0
    ends = np.sort(np.where(ends < 0, POS, ends))
    closed = np.searchsorted(ends, starts, side="right")
    return int((np.arange(1, len(starts) + 1) - closed).max())


def _dedup_peak(clock: np.ndarray, horizon_ms: int) -> int:
    if len(clock) == 0:
        return 0
    first = np.searchsorted(clock, clock - horizon_ms, side="right")
    return int((np.arange(len(clock)) - first + 1).max())


class _Prepared:
    """What every candidate of one (idleness, window size) shares, computed once.

    Within one window, in arrival order, ``d = watermark before the record - (window end - 1)``
    never decreases (the watermark never goes back), so its counted records are on time, then
    late, then beyond: a candidate's verdicts per window are a count (``d < bound``) and a
    position, and a key-window's first on-time record, if any, is its first record."""

    def __init__(self, arr: Arrivals, wms: Watermarks, w: int) -> None:
        self.idx = np.flatnonzero(arr.counted)
        e = arr.event_ms[self.idx]
        start = e - np.mod(e, w)
        self.d = wms.before[self.idx] - (start + (w - 1))
        self.d_sorted = np.sort(self.d)
        self.clock = arr.clock_ms[self.idx]
        n = len(self.idx)
        lo = int(start.min()) if n else 0
        widx = (start - lo) // w
        self.wperm = np.argsort(widx, kind="stable")  # by window, then arrival
        sw = widx[self.wperm]
        self.wbounds = np.flatnonzero(np.r_[True, sw[1:] != sw[:-1]]) if n else np.zeros(0, dtype=np.int64)
        self.wsize = np.diff(np.r_[self.wbounds, n])
        self.wstart = start[self.wperm[self.wbounds]] if n else start
        self.dg = self.d[self.wperm]
        self.clock_g = self.clock[self.wperm]
        group_of = np.repeat(np.arange(len(self.wbounds)), self.wsize)  # per position in wperm
        key = arr.key[self.idx] if arr.key is not None else np.zeros(n, dtype=np.int64)
        kmin = int(key.min()) if n else 0
        kw = (key - kmin) * (int(widx.max(initial=0)) + 1) + widx
        _, first = np.unique(kw, return_index=True)  # first arrival of every key-window
        self.kw_first = np.sort(first)
        inv = np.empty(n, dtype=np.int64)
        inv[self.wperm] = group_of
        self.kw_window = inv[self.kw_first]


def evaluate(arr: Arrivals, wms: Watermarks, cand: Candidate, sem: Semantics,
             _cache: dict | None = None, *, verdicts: bool = False) -> Outcome:
    """One candidate, given the bound-free watermark of its idleness timeout (``_cache``: shared
    work between candidates of the same watermark)."""
    b, w, lat = cand.max_out_of_orderness_ms, cand.window_size_ms, cand.allowed_lateness_ms
    cache = {} if _cache is None else _cache
    prep = cache.get(("prep", w))
    if prep is None:
        prep = cache[("prep", w)] = _Prepared(arr, wms, w)
    n = len(prep.idx)
    not_on_time = n - int(np.searchsorted(prep.d_sorted, b, side="left"))
    beyond = n - int(np.searchsorted(prep.d_sorted, b + lat, side="left"))
    late = not_on_time - beyond
    # per window: how many on time (a prefix), then the first late record
    on = np.add.reduceat(prep.dg < b, prep.wbounds, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    nxt = prep.wbounds + on
    has_next = on < prep.wsize
    nxt_c = np.minimum(nxt, max(n - 1, 0))
    has_late = has_next & (prep.dg[nxt_c] < b + lat)
    has_on = on > 0
    kept = has_on | has_late
    ws = prep.wstart[kept]
    fire_all = _crossing_clock(wms, prep.wstart + (w - 1) + b)
    fire = fire_all[kept]
    final = _crossing_clock(wms, ws + (w - 1) + lat + b)
    first = np.where(has_on[kept], fire, np.where(has_late[kept], prep.clock_g[nxt_c][kept], -1))
    end = ws + w
    rated = first >= 0
    # window state: a key-window with on-time events, from its first (on-time) record to firing
    open_kw = prep.d[prep.kw_first] < b
    open_peak = _peak_open(prep.clock[prep.kw_first[open_kw]], fire_all[prep.kw_window[open_kw]])
    horizon = max(sem.dedup_horizon_ms, lat)
    dedup = cache.get(("dedup", horizon))
    if dedup is None:
        dedup = cache[("dedup", horizon)] = _dedup_peak(prep.clock, horizon)
    return Outcome(
        candidate=cand, events=n, on_time=n - not_on_time, late_within=late, beyond=beyond,
        windows=int(np.count_nonzero(kept)),
        first_rating_ms=_percentiles((first - end)[rated].astype(np.float64)),
        final_ms=_percentiles((final - end)[final >= 0].astype(np.float64)),
        unrated_windows=int(np.count_nonzero(~rated)),
        open_windows_peak=open_peak,
        dedup_entries_peak=dedup,
        verdicts=classify(arr, wms.before, b, w, lat) if verdicts else np.zeros(0, dtype=np.int8),
    )


def simulate(arr: Arrivals, candidates: Sequence[Candidate], sem: Semantics, *,
             verdicts: bool = False) -> list[Outcome]:
    """Every candidate, in the given order; one watermark pass per idleness value.
    ``verdicts``: keep every record's verdict (memory: one byte per record and candidate)."""
    by_idle: dict[int, tuple[Watermarks, dict]] = {}
    out = []
    for c in candidates:
        got = by_idle.get(c.idleness_timeout_ms)
        if got is None:
            got = by_idle[c.idleness_timeout_ms] = (combined_watermark(arr, c.idleness_timeout_ms, sem), {})
        out.append(evaluate(arr, got[0], c, sem, got[1], verdicts=verdicts))
    return out


def disorder_ms(arr: Arrivals) -> np.ndarray:
    """Per record: how far its event time is behind the largest one its partition had before
    (0 when it is the largest so far): the bound a watermark needs to keep it on time."""
    out = np.zeros(len(arr), dtype=np.int64)
    for p in arr.partitions:
        idx = np.flatnonzero(arr.partition == p)
        if len(idx):
            e = arr.event_ms[idx]
            out[idx] = np.maximum(np.maximum.accumulate(e) - e, 0)
    return out
