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
from pricing.charges import CAUSES, Charge, charge_id
from pricing.errors import MeterNotPricedError, NoPriceVersionError
from pricing.models import PriceModel, diff_lines
from pricing.money import CTX, ZERO, dstr, to_decimal
from pricing.periods import ensure_utc, is_period_start, isoformat_utc, period_end

Aggregation = Literal["sum", "count", "max"]
AGGREGATIONS = frozenset({"sum", "count", "max"})

SUM_FORMULA = (
    "Rate(period) = Σ_w [P_v(w)(C_before(w) + q(w)) − P_v(w)(C_before(w))], windows in "
    "window-start order; charge = Rate(period) after this change − Σ charges already recorded"
)
MAX_FORMULA = (
    "Rate(period) = P_v(Q_max)(Q_max), Q_max = max window quantity, v = version effective at "
    "the start of the earliest window holding Q_max; charge = Rate(period) after this change − "
    "Σ charges already recorded"
)


def _quantity(value: object) -> Decimal:
    q = value if type(value) is Decimal else to_decimal(value, "quantity")
    if q < ZERO or not q.is_finite():  # type: ignore[operator,union-attr]
        raise ValueError(f"quantity must be finite and >= 0, got {value}")
    return q  # type: ignore[return-value]


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
        rate = res.model(i, at).amount(qmax)
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
        contrib = CTX.subtract(m.amount(after), m.amount(c))
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

    In-order windows (a window after all known ones) take an O(1) fast path; any other update
    recomputes the contributions from the changed window onward (their tier positions shift).

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
        # sum mode: parallel arrays sorted by window start
        self._starts: list[datetime] = []
        self._qty: list[Decimal] = []
        self._cbefore: list[Decimal] = []
        self._contrib: list[Decimal] = []
        self._vidx: list[int] = []
        self._total = ZERO
        self._tail_vidx = -1
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
        rate = ZERO
        res = self._res
        for s, q in items:
            i = res.index(s)
            m = res.model(i)
            after = CTX.add(c, q)
            contrib = CTX.subtract(m.amount(after), m.amount(c))
            self._starts.append(s)
            self._qty.append(q)
            self._cbefore.append(c)
            self._contrib.append(contrib)
            self._vidx.append(i)
            rate = CTX.add(rate, contrib)
            c = after
        self._total = c
        self._rate = rate
        self._reset_tail()

    def _reset_tail(self) -> None:
        if self._vidx:
            i = self._vidx[-1]
            self._tail_vidx = i
            self._tail_amount = self._res.model(i).amount(self._total)
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
        self._rate = self._res.model(i).amount(best_q)

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
        model = self._res.model(vidx)
        c = self._total
        after = CTX.add(c, q)
        a_after = model.amount(after)
        a_before = self._tail_amount if self._tail_vidx == vidx else model.amount(c)
        contrib = CTX.subtract(a_after, a_before)
        self._starts.append(ws)
        self._qty.append(q)
        self._cbefore.append(c)
        self._contrib.append(contrib)
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
        snap = _SumSnapshot(
            self, ws, we, q_old=None, q_new=q, c_before=c, vidx=vidx,
            contrib_old=ZERO, contrib_new=contrib, rate_before=rate_before,
            rate_after=rate_after, charged_before=charged_before, amount=amount,
            cause=cause, revision=revision, shifted=(), n_shifted=0,
        )
        return self._charge(ws, we, q, amount, vidx, cause, revision, snap.build)

    def _update_sum_slow(
        self, ws: datetime, we: datetime, q: Decimal, vidx: int, cause: str, revision: int
    ) -> Charge | None:
        starts, qty, cb, contrib, vx = self._starts, self._qty, self._cbefore, self._contrib, self._vidx
        n = len(starts)
        i = bisect_left(starts, ws)
        exists = i < n and starts[i] == ws
        res = self._res
        if exists:
            q_old: Decimal | None = qty[i]
            if q_old == q:
                return self._reconcile(ws, we, q, vidx, i, cause, revision)
            qty[i] = q
        else:
            q_old = None
            c_i = cb[i] if i < n else self._total
            starts.insert(i, ws)
            qty.insert(i, q)
            cb.insert(i, c_i)
            contrib.insert(i, ZERO)
            vx.insert(i, vidx)
            n += 1
        rate_before = self._rate
        c = cb[i]
        delta = ZERO
        shifted: list[tuple[datetime, str, Decimal, Decimal, Decimal, Decimal]] = []
        n_shifted = 0
        contrib_old_i = contrib[i]
        contrib_new_i = ZERO
        for j in range(i, n):
            m = res.model(vx[j])
            qj = qty[j]
            after = CTX.add(c, qj)
            new = CTX.subtract(m.amount(after), m.amount(c))
            old = contrib[j]
            if j == i:
                contrib_new_i = new
            else:
                if cb[j] != c:
                    n_shifted += 1
                if new != old:
                    shifted.append((starts[j], res.version(vx[j]).name, cb[j], c, old, new))
            delta = CTX.add(delta, CTX.subtract(new, old))
            cb[j] = c
            contrib[j] = new
            c = after
        self._total = c
        rate_after = CTX.add(rate_before, delta)
        self._rate = rate_after
        self._reset_tail()
        charged_before = self._charged
        amount = CTX.subtract(rate_after, charged_before)
        self._charged = rate_after
        snap = _SumSnapshot(
            self, ws, we, q_old=q_old, q_new=q, c_before=cb[i], vidx=vidx,
            contrib_old=contrib_old_i, contrib_new=contrib_new_i, rate_before=rate_before,
            rate_after=rate_after, charged_before=charged_before, amount=amount,
            cause=cause, revision=revision, shifted=tuple(shifted), n_shifted=n_shifted,
        )
        q_delta = CTX.subtract(q, q_old if q_old is not None else ZERO)
        return self._charge(ws, we, q_delta, amount, vidx, cause, revision, snap.build)

    def _reconcile(
        self, ws: datetime, we: datetime, q: Decimal, vidx: int, i: int, cause: str, revision: int
    ) -> Charge | None:
        """Quantity unchanged: nothing to charge unless Σ charged (restored) differs from Rate."""
        if self._charged == self._rate:
            return None
        charged_before = self._charged
        amount = CTX.subtract(self._rate, charged_before)
        self._charged = self._rate
        snap = _SumSnapshot(
            self, ws, we, q_old=q, q_new=q, c_before=self._cbefore[i], vidx=vidx,
            contrib_old=self._contrib[i], contrib_new=self._contrib[i], rate_before=self._rate,
            rate_after=self._rate, charged_before=charged_before, amount=amount,
            cause=cause, revision=revision, shifted=(), n_shifted=0,
        )
        return self._charge(ws, we, ZERO, amount, vidx, cause, revision, snap.build)

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
            self._rate = self._res.model(vidx).amount(q)
        elif ws == cur:  # the peak window was revised down: another window may hold the max now
            self._recompute_max()
        max_at = self._max_at
        assert max_at is not None
        rate_after = self._rate
        charged_before = self._charged
        amount = CTX.subtract(rate_after, charged_before)
        self._charged = rate_after
        max_vidx = self._res.index(max_at)
        snap = _MaxSnapshot(
            self, ws, we, q_old, q, max_at_before, max_q_before, max_at, wq[max_at], max_vidx,
            rate_before, rate_after, charged_before, amount, cause, revision,
        )
        q_delta = CTX.subtract(q, q_old if q_old is not None else ZERO)
        return self._charge(ws, we, q_delta, amount, max_vidx, cause, revision, snap.build)

    def _charge(
        self, ws: datetime, we: datetime, q_delta: Decimal, amount: Decimal, vidx: int,
        cause: str, revision: int, build: Any,
    ) -> Charge:
        return Charge(
            charge_id=charge_id(self.customer_id, self.meter, self.period_start, ws, cause, revision),
            customer_id=self.customer_id,
            meter=self.meter,
            period_start=self.period_start,
            window_start=ws,
            window_end=we,
            currency=self.currency,
            quantity_delta=q_delta,
            amount=amount,
            price_book_id=self.book.price_book_id,
            price_version=self.book.versions[vidx].name,
            cause=cause,
            revision=revision,
            build_calculation=build,
        )


def _quantity_money(value: object) -> Decimal:
    return value if type(value) is Decimal else to_decimal(value, "charged")  # type: ignore[return-value]


def _signed(d: Decimal) -> str:
    s = dstr(d)
    return s if s.startswith("-") else "+" + s


class _SumSnapshot:
    """Immutable inputs of a sum-mode explanation; ``build()`` renders the calculation dict."""

    __slots__ = (
        "book", "meter", "aggregation", "model", "ws", "we", "q_old", "q_new", "c_before",
        "version", "contrib_old", "contrib_new", "rate_before", "rate_after", "charged_before",
        "amount", "cause", "revision", "shifted", "n_shifted",
    )

    def __init__(self, rater: PeriodRater, ws: datetime, we: datetime, *, q_old: Decimal | None,
                 q_new: Decimal, c_before: Decimal, vidx: int, contrib_old: Decimal,
                 contrib_new: Decimal, rate_before: Decimal, rate_after: Decimal,
                 charged_before: Decimal, amount: Decimal, cause: str, revision: int,
                 shifted: tuple[Any, ...], n_shifted: int) -> None:
        self.book = rater.book
        self.meter = rater.meter
        self.aggregation = rater.aggregation
        self.model = rater._res.model(vidx)
        self.version = rater.book.versions[vidx]
        self.ws, self.we, self.q_old, self.q_new = ws, we, q_old, q_new
        self.c_before = c_before
        self.contrib_old, self.contrib_new = contrib_old, contrib_new
        self.rate_before, self.rate_after = rate_before, rate_after
        self.charged_before, self.amount = charged_before, amount
        self.cause, self.revision = cause, revision
        self.shifted, self.n_shifted = shifted, n_shifted

    def build(self) -> dict[str, Any]:
        q_old = self.q_old if self.q_old is not None else ZERO
        c = self.c_before
        after_old = CTX.add(c, q_old)
        after_new = CTX.add(c, self.q_new)
        m = self.model
        tiers = diff_lines(m.breakdown(after_new), m.breakdown(after_old))
        v = self.version.name
        window_delta = CTX.subtract(self.contrib_new, self.contrib_old)
        formula = (
            f"{SUM_FORMULA}. This window: P_{v}({dstr(c)} + {dstr(self.q_new)}) − "
            f"P_{v}({dstr(c)}) = {dstr(self.contrib_new)} (was {dstr(self.contrib_old)}, "
            f"change {_signed(window_delta)}). Charge = {dstr(self.rate_after)} − "
            f"{dstr(self.charged_before)} = {dstr(self.amount)}"
        )
        calc: dict[str, Any] = {
            "cause": self.cause,
            "revision": self.revision,
            "aggregation": self.aggregation,
            "window": {"start": isoformat_utc(self.ws), "end": isoformat_utc(self.we)},
            "quantity": {
                "before": None if self.q_old is None else dstr(self.q_old),
                "after": dstr(self.q_new),
                "delta": dstr(CTX.subtract(self.q_new, q_old)),
            },
            "cumulative": {
                "before": dstr(c),
                "after": dstr(after_new),
                "after_previous": dstr(after_old),
            },
            "price_book_id": self.book.price_book_id,
            "price_version": v,
            "effective_from": isoformat_utc(self.version.effective_from),
            "currency": self.book.currency,
            "model": m.kind,
            "tiers": [ln.to_json() for ln in tiers],
            "window_amount": {
                "before": dstr(self.contrib_old),
                "after": dstr(self.contrib_new),
                "delta": dstr(window_delta),
            },
            "formula": formula,
            "rate_before": dstr(self.rate_before),
            "rate_after": dstr(self.rate_after),
            "charged_before": dstr(self.charged_before),
            "amount": dstr(self.amount),
        }
        notes: list[str] = []
        if self.q_old is None:
            notes.append("first firing of this window in the rater")
        if self.n_shifted:
            moved = CTX.subtract(self.q_new, q_old)
            shifted_delta = ZERO
            for s in self.shifted:
                shifted_delta = CTX.add(shifted_delta, CTX.subtract(s[5], s[4]))
            notes.append(
                f"out of order: the tier position of {self.n_shifted} later window(s) moved by "
                f"{_signed(moved)} units; {len(self.shifted)} of them changed amount, by "
                f"{_signed(shifted_delta)} in total, included in this charge"
            )
            calc["shifted_windows"] = [
                {
                    "window_start": isoformat_utc(s[0]),
                    "price_version": s[1],
                    "cumulative_before_old": dstr(s[2]),
                    "cumulative_before_new": dstr(s[3]),
                    "amount_old": dstr(s[4]),
                    "amount_new": dstr(s[5]),
                }
                for s in self.shifted
            ]
        if self.charged_before != self.rate_before:
            notes.append(
                f"Σ charged before ({dstr(self.charged_before)}) differed from Rate before this "
                f"change ({dstr(self.rate_before)}); the difference is settled in this charge"
            )
        if notes:
            calc["note"] = "; ".join(notes)
        return calc


class _MaxSnapshot:
    __slots__ = (
        "book", "meter", "res", "ws", "we", "q_old", "q_new", "max_at_before", "max_q_before",
        "max_at", "max_q", "max_vidx", "rate_before", "rate_after", "charged_before", "amount",
        "cause", "revision",
    )

    def __init__(self, rater: PeriodRater, ws: datetime, we: datetime, q_old: Decimal | None,
                 q_new: Decimal, max_at_before: datetime | None, max_q_before: Decimal | None,
                 max_at: datetime, max_q: Decimal, max_vidx: int, rate_before: Decimal,
                 rate_after: Decimal, charged_before: Decimal, amount: Decimal, cause: str,
                 revision: int) -> None:
        self.book, self.meter, self.res = rater.book, rater.meter, rater._res
        self.ws, self.we, self.q_old, self.q_new = ws, we, q_old, q_new
        self.max_at_before, self.max_q_before = max_at_before, max_q_before
        self.max_at, self.max_q, self.max_vidx = max_at, max_q, max_vidx
        self.rate_before, self.rate_after = rate_before, rate_after
        self.charged_before, self.amount = charged_before, amount
        self.cause, self.revision = cause, revision

    def build(self) -> dict[str, Any]:
        m = self.res.model(self.max_vidx)
        ver = self.book.versions[self.max_vidx]
        q_old = self.q_old if self.q_old is not None else ZERO
        br = m.breakdown(self.max_q)
        calc: dict[str, Any] = {
            "cause": self.cause,
            "revision": self.revision,
            "aggregation": "max",
            "window": {"start": isoformat_utc(self.ws), "end": isoformat_utc(self.we)},
            "quantity": {
                "before": None if self.q_old is None else dstr(self.q_old),
                "after": dstr(self.q_new),
                "delta": dstr(CTX.subtract(self.q_new, q_old)),
            },
            "max": {
                "before": None if self.max_q_before is None else {
                    "window_start": isoformat_utc(self.max_at_before),  # type: ignore[arg-type]
                    "quantity": dstr(self.max_q_before),
                },
                "after": {"window_start": isoformat_utc(self.max_at), "quantity": dstr(self.max_q)},
            },
            "price_book_id": self.book.price_book_id,
            "price_version": ver.name,
            "effective_from": isoformat_utc(ver.effective_from),
            "currency": self.book.currency,
            "model": m.kind,
            "tiers": [ln.to_json() for ln in br.lines],
            "formula": (
                f"{MAX_FORMULA}. Here P_{ver.name}({dstr(self.max_q)}) = {dstr(self.rate_after)}; "
                f"charge = {dstr(self.rate_after)} − {dstr(self.charged_before)} = {dstr(self.amount)}"
            ),
            "rate_before": dstr(self.rate_before),
            "rate_after": dstr(self.rate_after),
            "charged_before": dstr(self.charged_before),
            "amount": dstr(self.amount),
        }
        if self.charged_before != self.rate_before:
            calc["note"] = (
                f"Σ charged before ({dstr(self.charged_before)}) differed from Rate before this "
                f"change ({dstr(self.rate_before)}); the difference is settled in this charge"
            )
        return calc
