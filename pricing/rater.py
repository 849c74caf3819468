"""Rate(period) and the incremental rater of one (customer, meter, billing period).

Sum (and count) meters — DESIGN.md section 4::

    Rate(period) = Σ_w [ P_v(w)(C_before(w) + q(w)) − P_v(w)(C_before(w)) ]

windows ``w`` in window-start order, ``C_before(w)`` the cumulative quantity of the earlier windows
of the same (customer, meter, period), ``v(w)`` the version effective at the window start. With one
version in the period this telescopes to ``P(total quantity)``.

Max meters (e.g. peak seats): the period is priced once, as a whole, on its peak::

    Rate(period) = P_v(Q_max)(Q_max),  Q_max = max_w q(w)

where ``v`` is the version effective at the start of the EARLIEST window holding that maximum
(ties go to the earlier window, so the result does not depend on arrival order).

Charges are deltas: each change of a window's quantity yields ``Rate(now) − Σ already charged``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pricing.book import PriceBook, PriceVersion
from pricing.charges import CAUSES, Charge, ChargeIdFactory
from pricing.errors import MeterNotPricedError, NoPriceVersionError
from pricing.models import PriceModel, delta_lines
from pricing.money import CTX, ZERO, dstr, to_decimal
from pricing.periods import ensure_utc, is_period_start, isoformat_utc, period_end

Aggregation = Literal["sum", "count", "max"]
AGGREGATIONS = frozenset({"sum", "count", "max"})
_AGGREGATION_OF: dict[str, Aggregation] = {"sum": "sum", "count": "count", "max": "max"}

SUM_FORMULA = (
    "Rate(period) = Σ_w [P_v(w)(C_before(w) + q(w)) − P_v(w)(C_before(w))], windows in "
    "window-start order; charge = Rate(period) after this change − Σ charges already recorded"
)
MAX_FORMULA = (
    "Rate(period) = P_v(Q_max)(Q_max), Q_max = max window quantity, v = version effective at "
    "the start of the earliest window holding Q_max; charge = Rate(period) after this change − "
    "Σ charges already recorded"
)


def aggregation_of(value: str) -> Aggregation:
    """A meter's configured aggregation (plain text in settings and Postgres) as an
    :data:`Aggregation`; ValueError when it is none."""
    try:
        return _AGGREGATION_OF[value]
    except KeyError:
        raise ValueError(f"aggregation must be one of sum, count, max, got {value!r}") from None


def _quantity(value: object) -> Decimal:
    q = value if type(value) is Decimal else to_decimal(value, "quantity")
    if q < ZERO or not q.is_finite():
        raise ValueError(f"quantity must be finite and >= 0, got {value}")
    return q


def _utc(dt: datetime, what: str) -> datetime:
    if type(dt) is datetime and dt.tzinfo is UTC:
        return dt
    return ensure_utc(dt, what)


class _Resolver:
    """Version + model lookup for one (book, meter, customer), cached per version."""

    __slots__ = ("book", "meter", "customer_id", "_models", "_lo", "_hi", "_idx")

    def __init__(self, book: PriceBook, meter: str, customer_id: str | None) -> None:
        self.book = book
        self.meter = meter
        self.customer_id = customer_id
        self._models: dict[int, PriceModel] = {}
        self._lo: datetime | None = None
        self._hi: datetime | None = None
        self._idx = -1

    def index(self, start: datetime) -> int:
        lo = self._lo
        if lo is not None and lo <= start and (self._hi is None or start < self._hi):
            return self._idx
        book = self.book
        i = book.version_index_at(start)
        if i < 0:
            raise NoPriceVersionError(
                price_book_id=book.price_book_id,
                instant=start,
                customer_id=self.customer_id,
                meter=self.meter,
                first_effective_from=book.versions[0].effective_from,
            )
        self.model(i, start)  # raises if the meter is not priced in that version
        vs = book.versions
        self._lo = vs[i].effective_from
        self._hi = vs[i + 1].effective_from if i + 1 < len(vs) else None
        self._idx = i
        return i

    def model(self, i: int, instant: datetime | None = None) -> PriceModel:
        m = self._models.get(i)
        if m is None:
            ver = self.book.versions[i]
            m = ver.model_for(self.meter)
            if m is None:
                raise MeterNotPricedError(
                    price_book_id=self.book.price_book_id,
                    version=ver.name,
                    meter=self.meter,
                    customer_id=self.customer_id,
                    instant=instant,
                )
            self._models[i] = m
        return m

    def version(self, i: int) -> PriceVersion:
        return self.book.versions[i]


# --- Rate(period) from scratch ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowRating:
    window_start: datetime
    quantity: Decimal
    cumulative_before: Decimal
    price_version: str
    amount: Decimal  # this window's contribution (sum mode); 0 except at the max window (max mode)


@dataclass(frozen=True, slots=True)
class PeriodRating:
    rate: Decimal
    windows: tuple[WindowRating, ...]
    aggregation: str


def rate_windows(
    book: PriceBook,
    meter: str,
    windows: Mapping[datetime, object] | Iterable[tuple[datetime, object]],
    *,
    aggregation: Aggregation = "sum",
    customer_id: str | None = None,
) -> PeriodRating:
    """Rate(period) computed from scratch from the final window quantities, with per-window detail.
    ``windows`` maps window_start → quantity (all windows of one billing period)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of sum, count, max, got {aggregation!r}")
    items = windows.items() if isinstance(windows, Mapping) else windows
    ws = sorted((_utc(s, "window_start"), _quantity(q)) for s, q in items)
    for a, b in zip(ws, ws[1:], strict=False):
        if a[0] == b[0]:
            raise ValueError(f"window {isoformat_utc(a[0])} is listed twice")
    res = _Resolver(book, meter, customer_id)
    out: list[WindowRating] = []
    if aggregation == "max":
        if not ws:
            return PeriodRating(ZERO, (), aggregation)
        qmax = max(q for _, q in ws)
        at = next(s for s, q in ws if q == qmax)  # earliest window holding the max
        i = res.index(at)
        rate = res.model(i, at).raw_amount(qmax)
        for s, q in ws:
            j = res.index(s)
            out.append(WindowRating(s, q, ZERO, book.versions[j].name, rate if s == at else ZERO))
        return PeriodRating(rate, tuple(out), aggregation)
    c = ZERO
    rate = ZERO
    for s, q in ws:
        i = res.index(s)
        m = res.model(i, s)
        after = CTX.add(c, q)
        contrib = CTX.subtract(m.raw_amount(after), m.raw_amount(c))
        out.append(WindowRating(s, q, c, book.versions[i].name, contrib))
        rate = CTX.add(rate, contrib)
        c = after
    return PeriodRating(rate, tuple(out), aggregation)


def rate_period(
    book: PriceBook,
    meter: str,
    windows: Mapping[datetime, object] | Iterable[tuple[datetime, object]],
    *,
    aggregation: Aggregation = "sum",
    customer_id: str | None = None,
) -> Decimal:
    """Rate(period) (unrounded) from the final window quantities. See the module docstring."""
    return rate_windows(
        book, meter, windows, aggregation=aggregation, customer_id=customer_id
    ).rate


# --- the incremental rater --------------------------------------------------------------------


class PeriodRater:
    """Incremental rater for one (customer, meter, billing period).

    ``update()`` sets a window's ABSOLUTE quantity (updates may arrive in any order: a new window,
    a revision of a window, an earlier window after later ones) and returns the delta charge
    ``Rate(now) − Σ already charged``, with its explanation. Returns ``None`` when nothing is to be
    charged: the window's quantity is unchanged AND Σ charged already equals Rate(now). A new
    window always yields a charge (possibly of amount 0, e.g. a window of 0 units or a free tier),
    and so does any change of quantity.

    Cost: a window after all known ones (the common case) takes an O(1) fast path (one model
    evaluation, the previous cumulative amount is reused). Any other update shifts the tier
    position of the later windows: their cumulative positions are updated (O(n) additions) and
    Rate is recomputed per run of windows sharing a version (telescoping, O(versions) model
    evaluations). The explanation is built on first access of ``Charge.calculation``.

    State to persist between runs: :meth:`state` (window_start → quantity, and Σ charged); restore
    with ``PeriodRater(..., windows=..., charged=...)``.
    """

    def __init__(
        self,
        book: PriceBook,
        customer_id: str,
        meter: str,
        period_start: datetime,
        aggregation: Aggregation = "sum",
        *,
        windows: Mapping[datetime, object] | None = None,
        charged: object = ZERO,
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of sum, count, max, got {aggregation!r}")
        ps = ensure_utc(period_start, "period_start")
        if not is_period_start(ps):
            raise ValueError(f"period_start {isoformat_utc(ps)} is not the start of a billing period")
        self.book = book
        self.customer_id = customer_id
        self.meter = meter
        self.period_start = ps
        self.period_end = period_end(ps)
        self.aggregation = aggregation
        self.currency = book.currency
        self._max_mode = aggregation == "max"
        self._res = _Resolver(book, meter, customer_id)
        self._ids = ChargeIdFactory(customer_id, meter, ps)
        # sum mode: parallel arrays sorted by window start
        self._starts: list[datetime] = []
        self._qty: list[Decimal] = []
        self._cbefore: list[Decimal] = []
        self._vidx: list[int] = []
        self._total = ZERO
        self._tail_vidx = -1
        self._tail_model: PriceModel | None = None
        self._tail_amount = ZERO
        # max mode
        self._wq: dict[datetime, Decimal] = {}
        self._max_at: datetime | None = None
        self._rate = ZERO
        self._charged = _quantity_money(charged)
        if windows:
            for s, q in windows.items():
                s = self._check_window_start(_utc(s, "window_start"))
                self._res.index(s)
                if s in self._wq:
                    raise ValueError(f"window {isoformat_utc(s)} is listed twice")
                self._wq[s] = _quantity(q)
            if self._max_mode:
                self._recompute_max()
            else:
                self._rebuild_sum()

    # -- public state ---------------------------------------------------------------------

    @property
    def rate(self) -> Decimal:
        """Rate(period) of the current window quantities (unrounded)."""
        return self._rate

    @property
    def charged(self) -> Decimal:
        """Σ of the charges returned (plus the restored Σ)."""
        return self._charged

    @property
    def windows(self) -> dict[datetime, Decimal]:
        if self._max_mode:
            return dict(sorted(self._wq.items()))
        return dict(zip(self._starts, self._qty, strict=True))

    def state(self) -> dict[str, Any]:
        """What to persist: ``{"windows": {window_start: quantity}, "charged": Σ charged}``."""
        return {"windows": self.windows, "charged": self._charged}

    # -- helpers ---------------------------------------------------------------------------

    def _check_window_start(self, s: datetime) -> datetime:
        if not (self.period_start <= s < self.period_end):
            raise ValueError(
                f"window start {isoformat_utc(s)} is outside the billing period "
                f"[{isoformat_utc(self.period_start)}, {isoformat_utc(self.period_end)})"
            )
        return s

    def _rebuild_sum(self) -> None:
        items = sorted(self._wq.items())
        self._wq.clear()
        c = ZERO
        for s, q in items:
            self._starts.append(s)
            self._qty.append(q)
            self._cbefore.append(c)
            self._vidx.append(self._res.index(s))
            c = CTX.add(c, q)
        self._total = c
        self._rate = self._segment_sum(0)
        self._reset_tail()

    def _segment_sum(self, i: int) -> Decimal:
        """Σ of the contributions of windows i.. — telescoped per run of windows sharing a
        version: Σ_{w in run} [P_v(C_before(w) + q(w)) − P_v(C_before(w))] = P_v(end) − P_v(start)."""
        starts, qty, cb, vx = self._starts, self._qty, self._cbefore, self._vidx
        n = len(starts)
        versions = self.book.versions
        nv = len(versions)
        total = ZERO
        a = i
        while a < n:
            v = vx[a]
            b = bisect_left(starts, versions[v + 1].effective_from, a) if v + 1 < nv else n
            m = self._res.model(v)
            end = CTX.add(cb[b - 1], qty[b - 1])
            total = CTX.add(total, CTX.subtract(m.raw_amount(end), m.raw_amount(cb[a])))
            a = b
        return total

    def _reset_tail(self) -> None:
        if self._vidx:
            i = self._vidx[-1]
            self._tail_vidx = i
            self._tail_model = self._res.model(i)
            self._tail_amount = self._tail_model.raw_amount(self._total)
        else:
            self._tail_vidx = -1
            self._tail_amount = ZERO

    def _recompute_max(self) -> None:
        if not self._wq:
            self._max_at = None
            self._rate = ZERO
            return
        best_s: datetime | None = None
        best_q = ZERO
        for s, q in self._wq.items():
            if best_s is None or q > best_q or (q == best_q and s < best_s):
                best_s, best_q = s, q
        assert best_s is not None
        self._max_at = best_s
        i = self._res.index(best_s)
        self._rate = self._res.model(i).raw_amount(best_q)

    # -- update ----------------------------------------------------------------------------

    def update(
        self,
        window_start: datetime,
        window_end: datetime,
        quantity: object,
        *,
        cause: str,
        revision: int,
    ) -> Charge | None:
        """Set the window's absolute quantity; return the delta charge (see the class docstring)."""
        q = _quantity(quantity)
        ws = _utc(window_start, "window_start")
        we = _utc(window_end, "window_end")
        if not (self.period_start <= ws < self.period_end):
            self._check_window_start(ws)
        if not (ws < we <= self.period_end):
            raise ValueError(
                f"window end {isoformat_utc(we)} must be after the window start "
                f"{isoformat_utc(ws)} and within the billing period"
            )
        if cause not in CAUSES:
            raise ValueError(f"cause must be one of {', '.join(sorted(CAUSES))}, got {cause!r}")
        if type(revision) is not int or revision < 0:
            raise ValueError(f"revision must be an int >= 0, got {revision!r}")
        vidx = self._res.index(ws)  # raises before any state changes
        if self._max_mode:
            return self._update_max(ws, we, q, vidx, cause, revision)
        starts = self._starts
        if not starts or ws > starts[-1]:
            return self._append(ws, we, q, vidx, cause, revision)
        return self._update_sum_slow(ws, we, q, vidx, cause, revision)

    def _append(
        self, ws: datetime, we: datetime, q: Decimal, vidx: int, cause: str, revision: int
    ) -> Charge:
        c = self._total
        after = CTX.add(c, q)
        tail = self._tail_model
        if self._tail_vidx == vidx and tail is not None:
            a_after = tail.raw_amount(after)
            a_before = self._tail_amount
        else:
            model = self._tail_model = self._res.model(vidx)
            a_after = model.raw_amount(after)
            a_before = model.raw_amount(c)
        contrib = CTX.subtract(a_after, a_before)
        self._starts.append(ws)
        self._qty.append(q)
        self._cbefore.append(c)
        self._vidx.append(vidx)
        self._total = after
        self._tail_vidx = vidx
        self._tail_amount = a_after
        rate_before = self._rate
        rate_after = CTX.add(rate_before, contrib)
        charged_before = self._charged
        amount = CTX.subtract(rate_after, charged_before)
        self._rate = rate_after
        self._charged = rate_after
        return Charge(
            self._ids(ws, cause, revision), self.customer_id, self.meter, self.period_start, ws,
            we, self.currency, q, amount, self.book.price_book_id, self.book.versions[vidx].name,
            cause, revision, None, _explain_sum,
            (self, ws, we, None, q, c, vidx, rate_before, rate_after, charged_before, amount,
             cause, revision, None),
        )

    def _update_sum_slow(
        self, ws: datetime, we: datetime, q: Decimal, vidx: int, cause: str, revision: int
    ) -> Charge | None:
        starts, qty, cb, vx = self._starts, self._qty, self._cbefore, self._vidx
        i = bisect_left(starts, ws)
        exists = starts[i] == ws  # i < len(starts): ws <= starts[-1] on this path
        q_old: Decimal | None = qty[i] if exists else None
        if exists and q_old == q:
            return self._reconcile(ws, we, q, vidx, i, cause, revision)
        rate_before = self._rate
        old_seg = self._segment_sum(i)
        c_i = cb[i]
        later = i + 1 if exists else i
        # snapshot of the later windows (positions before the shift) for the explanation
        tail = (starts[later:], qty[later:], cb[later:], vx[later:])
        if exists:
            qty[i] = q
        else:
            starts.insert(i, ws)
            qty.insert(i, q)
            cb.insert(i, c_i)
            vx.insert(i, vidx)
        dq = CTX.subtract(q, q_old) if q_old is not None else q
        if dq:
            for j in range(i + 1, len(starts)):
                cb[j] = CTX.add(cb[j], dq)
            self._total = CTX.add(self._total, dq)
        new_seg = self._segment_sum(i)
        rate_after = CTX.add(CTX.subtract(rate_before, old_seg), new_seg)
        self._rate = rate_after
        self._reset_tail()
        charged_before = self._charged
        amount = CTX.subtract(rate_after, charged_before)
        self._charged = rate_after
        return Charge(
            self._ids(ws, cause, revision), self.customer_id, self.meter, self.period_start, ws,
            we, self.currency, dq, amount, self.book.price_book_id, self.book.versions[vidx].name,
            cause, revision, None, _explain_sum,
            (self, ws, we, q_old, q, c_i, vidx, rate_before, rate_after, charged_before, amount,
             cause, revision, (tail, dq) if dq and tail[0] else None),
        )

    def _reconcile(
        self, ws: datetime, we: datetime, q: Decimal, vidx: int, i: int, cause: str, revision: int
    ) -> Charge | None:
        """Quantity unchanged: nothing to charge unless Σ charged (restored) differs from Rate."""
        if self._charged == self._rate:
            return None
        charged_before = self._charged
        amount = CTX.subtract(self._rate, charged_before)
        self._charged = self._rate
        return Charge(
            self._ids(ws, cause, revision), self.customer_id, self.meter, self.period_start, ws,
            we, self.currency, ZERO, amount, self.book.price_book_id,
            self.book.versions[vidx].name, cause, revision, None, _explain_sum,
            (self, ws, we, q, q, self._cbefore[i], vidx, self._rate, self._rate, charged_before,
             amount, cause, revision, None),
        )

    def _update_max(
        self, ws: datetime, we: datetime, q: Decimal, vidx: int, cause: str, revision: int
    ) -> Charge | None:
        wq = self._wq
        q_old = wq.get(ws)
        if q_old is not None and q_old == q and self._charged == self._rate:
            return None
        max_at_before = self._max_at
        max_q_before = wq[max_at_before] if max_at_before is not None else None
        rate_before = self._rate
        cur = self._max_at
        cur_q = max_q_before
        wq[ws] = q
        if cur is None or cur_q is None or q > cur_q or (q == cur_q and ws <= cur):
            self._max_at = ws
            self._rate = self._res.model(vidx).raw_amount(q)
        elif ws == cur:  # the peak window was revised down: another window may hold the max now
            self._recompute_max()
        max_at = self._max_at
        assert max_at is not None
        rate_after = self._rate
        charged_before = self._charged
        amount = CTX.subtract(rate_after, charged_before)
        self._charged = rate_after
        max_vidx = self._res.index(max_at)
        q_delta = CTX.subtract(q, q_old) if q_old is not None else q
        return Charge(
            self._ids(ws, cause, revision), self.customer_id, self.meter, self.period_start, ws,
            we, self.currency, q_delta, amount, self.book.price_book_id,
            self.book.versions[max_vidx].name, cause, revision, None, _explain_max,
            (self, ws, we, q_old, q, max_at_before, max_q_before, max_at, wq[max_at], max_vidx,
             rate_before, rate_after, charged_before, amount, cause, revision),
        )


def _quantity_money(value: object) -> Decimal:
    return value if type(value) is Decimal else to_decimal(value, "charged")


def _signed(d: Decimal) -> str:
    s = dstr(d)
    return s if s.startswith("-") else "+" + s


def _explain_sum(
    rater: PeriodRater, ws: datetime, we: datetime, q_old: Decimal | None, q_new: Decimal,
    c: Decimal, vidx: int, rate_before: Decimal, rate_after: Decimal, charged_before: Decimal,
    amount: Decimal, cause: str, revision: int, shift: tuple[Any, Decimal] | None,
) -> dict[str, Any]:
    """The calculation of a sum-mode charge (only immutable values are read from the rater:
    book, meter, aggregation and the per-version models)."""
    res = rater._res
    book = rater.book
    m = res.model(vidx)
    version = book.versions[vidx]
    v = version.name
    q0 = q_old if q_old is not None else ZERO
    after_old = CTX.add(c, q0)
    after_new = CTX.add(c, q_new)
    a_c = m.raw_amount(c)
    contrib_old = CTX.subtract(m.raw_amount(after_old), a_c)
    contrib_new = CTX.subtract(m.raw_amount(after_new), a_c)
    window_delta = CTX.subtract(contrib_new, contrib_old)
    tiers = delta_lines(m, after_old, after_new)
    formula = (
        f"{SUM_FORMULA}. This window: P_{v}({dstr(c)} + {dstr(q_new)}) − P_{v}({dstr(c)}) = "
        f"{dstr(contrib_new)} (was {dstr(contrib_old)}, change {_signed(window_delta)}). "
        f"Charge = {dstr(rate_after)} − {dstr(charged_before)} = {dstr(amount)}"
    )
    calc: dict[str, Any] = {
        "cause": cause,
        "revision": revision,
        "aggregation": rater.aggregation,
        "window": {"start": isoformat_utc(ws), "end": isoformat_utc(we)},
        "quantity": {
            "before": None if q_old is None else dstr(q_old),
            "after": dstr(q_new),
            "delta": dstr(CTX.subtract(q_new, q0)),
        },
        "cumulative": {"before": dstr(c), "after": dstr(after_new), "after_previous": dstr(after_old)},
        "price_book_id": book.price_book_id,
        "price_version": v,
        "effective_from": isoformat_utc(version.effective_from),
        "currency": book.currency,
        "model": m.kind,
        "tiers": [ln.to_json() for ln in tiers],
        "window_amount": {
            "before": dstr(contrib_old),
            "after": dstr(contrib_new),
            "delta": dstr(window_delta),
        },
        "formula": formula,
        "rate_before": dstr(rate_before),
        "rate_after": dstr(rate_after),
        "charged_before": dstr(charged_before),
        "amount": dstr(amount),
    }
    notes: list[str] = []
    if q_old is None:
        notes.append("first firing of this window in the rater")
    if shift is not None:
        (starts, qty, cbs, vxs), dq = shift
        shifted = []
        shifted_delta = ZERO
        for s, qj, cb_old, vj in zip(starts, qty, cbs, vxs, strict=True):
            mj = res.model(vj)
            cb_new = CTX.add(cb_old, dq)
            old = CTX.subtract(mj.raw_amount(CTX.add(cb_old, qj)), mj.raw_amount(cb_old))
            new = CTX.subtract(mj.raw_amount(CTX.add(cb_new, qj)), mj.raw_amount(cb_new))
            if new != old:
                shifted_delta = CTX.add(shifted_delta, CTX.subtract(new, old))
                shifted.append({
                    "window_start": isoformat_utc(s),
                    "price_version": book.versions[vj].name,
                    "cumulative_before_old": dstr(cb_old),
                    "cumulative_before_new": dstr(cb_new),
                    "amount_old": dstr(old),
                    "amount_new": dstr(new),
                })
        notes.append(
            f"out of order: the tier position of {len(starts)} later window(s) moved by "
            f"{_signed(dq)} units; {len(shifted)} of them changed amount, by "
            f"{_signed(shifted_delta)} in total, included in this charge"
        )
        calc["shifted_windows"] = shifted
    if charged_before != rate_before:
        notes.append(
            f"Σ charged before ({dstr(charged_before)}) differed from Rate before this change "
            f"({dstr(rate_before)}); the difference is settled in this charge"
        )
    if notes:
        calc["note"] = "; ".join(notes)
    return calc


def _explain_max(
    rater: PeriodRater, ws: datetime, we: datetime, q_old: Decimal | None, q_new: Decimal,
    max_at_before: datetime | None, max_q_before: Decimal | None, max_at: datetime,
    max_q: Decimal, max_vidx: int, rate_before: Decimal, rate_after: Decimal,
    charged_before: Decimal, amount: Decimal, cause: str, revision: int,
) -> dict[str, Any]:
    book = rater.book
    m = rater._res.model(max_vidx)
    ver = book.versions[max_vidx]
    q0 = q_old if q_old is not None else ZERO
    br = m.breakdown(max_q)
    calc: dict[str, Any] = {
        "cause": cause,
        "revision": revision,
        "aggregation": "max",
        "window": {"start": isoformat_utc(ws), "end": isoformat_utc(we)},
        "quantity": {
            "before": None if q_old is None else dstr(q_old),
            "after": dstr(q_new),
            "delta": dstr(CTX.subtract(q_new, q0)),
        },
        "max": {
            "before": None if max_at_before is None or max_q_before is None else {
                "window_start": isoformat_utc(max_at_before),
                "quantity": dstr(max_q_before),
            },
            "after": {"window_start": isoformat_utc(max_at), "quantity": dstr(max_q)},
        },
        "price_book_id": book.price_book_id,
        "price_version": ver.name,
        "effective_from": isoformat_utc(ver.effective_from),
        "currency": book.currency,
        "model": m.kind,
        "tiers": [ln.to_json() for ln in br.lines],
        "formula": (
            f"{MAX_FORMULA}. Here P_{ver.name}({dstr(max_q)}) = {dstr(rate_after)}; "
            f"charge = {dstr(rate_after)} − {dstr(charged_before)} = {dstr(amount)}"
        ),
        "rate_before": dstr(rate_before),
        "rate_after": dstr(rate_after),
        "charged_before": dstr(charged_before),
        "amount": dstr(amount),
    }
    if charged_before != rate_before:
        calc["note"] = (
            f"Σ charged before ({dstr(charged_before)}) differed from Rate before this change "
            f"({dstr(rate_before)}); the difference is settled in this charge"
        )
    return calc
