"""Rate(period), the incremental PeriodRater and charge deltas (DESIGN.md §4, invariant 2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pricing import (
    MeterNotPricedError,
    NoPriceVersionError,
    PeriodRater,
    charge_id,
    price_book_from_data,
    rate_period,
)
from pricing.money import CTX

JAN = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
TIERS = [{"up_to": "1000", "unit_price": "0.10"}, {"unit_price": "0.08"}]


def book(*versions, currency="USD"):
    return price_book_from_data({
        "price_book_id": "pb",
        "currency": currency,
        "versions": [
            {"name": name, "effective_from": eff, "prices": [dict(meter="m", **spec)]}
            for name, eff, spec in versions
        ],
    })


ONE_TIERED = book(("v1", "2026-01-01T00:00:00Z", {"model": "tiered", "tiers": TIERS}))
ONE_VOLUME = book(("v1", "2026-01-01T00:00:00Z", {"model": "volume", "tiers": TIERS}))
ONE_FLAT = book(("v1", "2026-01-01T00:00:00Z", {"model": "flat", "unit_price": "0.08"}))


def w(hour: int) -> datetime:
    return JAN + hour * H


def feed(rater, updates, cause="window_fired"):
    out = []
    for rev, (hour, q) in enumerate(updates):
        out.append(rater.update(w(hour), w(hour) + H, D(q), cause=cause, revision=rev))
    return out


@pytest.mark.parametrize(("bk", "expected"), [(ONE_FLAT, "98.72"), (ONE_TIERED, "118.72"),
                                              (ONE_VOLUME, "98.72")])
def test_golden_1234_units_over_several_windows_rate_like_one_total(bk, expected):
    windows = {w(0): D(500), w(1): D(400), w(5): D(334)}
    assert rate_period(bk, "m", windows) == D(expected)
    rater = PeriodRater(bk, "c", "m", JAN)
    charges = feed(rater, [(0, 500), (1, 400), (5, 334)])
    assert CTX.add(CTX.add(charges[0].amount, charges[1].amount), charges[2].amount) == D(expected)


def test_a_volume_tier_crossing_gives_a_negative_charge():
    rater = PeriodRater(ONE_VOLUME, "c", "m", JAN)
    c1, c2 = feed(rater, [(0, 1000), (1, 1)])
    assert c1.amount == D("100.00")
    assert c2.amount == D("-19.92")  # 1001 × 0.08 − 100.00
    tiers = c2.calculation["tiers"]
    assert {t["tier"]: (t["units"], t["amount"]) for t in tiers} == {
        1: ("-1000", "-100.00"), 2: ("1001", "80.08")}


VERSIONED = book(
    ("v1", "2026-01-01T00:00:00Z", {"model": "tiered", "tiers": TIERS}),
    ("v2", "2026-01-15T00:00:00Z", {"model": "tiered",
                                    "tiers": [{"up_to": "1000", "unit_price": "0.05"},
                                              {"unit_price": "0.04"}]}),
    ("v3", "2026-01-20T00:30:00Z", {"model": "flat", "unit_price": "1"}),
)

VERSION_CASES = [
    # (windows {start: qty}, expected Rate, comment)
    # version change exactly at a window start: the window starting at 2026-01-15T00:00 is v2
    ({datetime(2026, 1, 14, 23, tzinfo=UTC): "600", datetime(2026, 1, 15, tzinfo=UTC): "600"},
     "60.00" "" and "60.00", "edge"),
    # mid-period change, tier position carried across versions: 900 in v1, then 300 under v2
    # at C_before = 900: 100 × 0.05 + 200 × 0.04
    ({datetime(2026, 1, 10, tzinfo=UTC): "900", datetime(2026, 1, 16, tzinfo=UTC): "300"},
     "103.00", "mid"),
    # a version starting mid-window (00:30) prices only windows starting at or after it:
    # the 00:00 window on the 20th is still v2
    ({datetime(2026, 1, 20, tzinfo=UTC): "10", datetime(2026, 1, 20, 1, tzinfo=UTC): "10"},
     "10.50", "inside"),
]


def test_version_change_exactly_at_a_window_start_prices_that_window_with_the_new_version():
    windows = {datetime(2026, 1, 14, 23, tzinfo=UTC): D(600), datetime(2026, 1, 15, tzinfo=UTC): D(600)}
    # 600 × 0.10 (v1) + [P_v2(1200) − P_v2(600)] = 60 + (400 × 0.05 + 200 × 0.04) = 60 + 28
    assert rate_period(VERSIONED, "m", windows) == D("88.00")
    rater = PeriodRater(VERSIONED, "c", "m", JAN)
    ch = [rater.update(s, s + H, q, cause="window_fired", revision=0) for s, q in windows.items()]
    assert [c.price_version for c in ch] == ["v1", "v2"]
    assert ch[1].amount == D("28.00")


def test_version_change_mid_period_keeps_the_period_cumulative_tier_position():
    windows = {datetime(2026, 1, 10, tzinfo=UTC): D(900), datetime(2026, 1, 16, tzinfo=UTC): D(300)}
    # 900 × 0.10 = 90 under v1; then P_v2(1200) − P_v2(900) = 100 × 0.05 + 200 × 0.04 = 13
    assert rate_period(VERSIONED, "m", windows) == D("103.00")


def test_a_version_starting_inside_a_window_applies_from_the_next_window():
    windows = {datetime(2026, 1, 20, tzinfo=UTC): D(10), datetime(2026, 1, 20, 1, tzinfo=UTC): D(10)}
    # v3 starts at 00:30: the 00:00 window is v2 (10 × 0.05 = 0.50), the 01:00 window v3 (10 × 1)
    assert rate_period(VERSIONED, "m", windows) == D("10.50")


def test_a_window_before_the_first_version_is_a_clear_error_and_changes_nothing():
    bk = book(("v1", "2026-01-10T00:00:00Z", {"model": "flat", "unit_price": "1"}))
    rater = PeriodRater(bk, "acme", "m", JAN)
    feed(rater, [(240, 5)])
    with pytest.raises(NoPriceVersionError, match="customer 'acme', meter 'm', at 2026-01-01T03:00"):
        rater.update(w(3), w(4), D(1), cause="window_fired", revision=0)
    assert rater.windows == {w(240): D(5)} and rater.rate == D(5)


def test_a_meter_without_a_price_is_an_error_never_zero():
    with pytest.raises(MeterNotPricedError, match="meter 'other' has no price for customer 'c'"):
        PeriodRater(ONE_FLAT, "c", "other", JAN).update(w(0), w(1), D(1), cause="window_fired",
                                                       revision=0)


def test_float_quantity_raises_type_error_and_naive_datetimes_are_rejected():
    rater = PeriodRater(ONE_FLAT, "c", "m", JAN)
    with pytest.raises(TypeError):
        rater.update(w(0), w(1), 1.5, cause="window_fired", revision=0)
    with pytest.raises(ValueError, match="naive"):
        rater.update(datetime(2026, 1, 1), w(1), D(1), cause="window_fired", revision=0)  # noqa: DTZ001 - naive on purpose: it must be refused
    with pytest.raises(ValueError, match="naive"):
        PeriodRater(ONE_FLAT, "c", "m", datetime(2026, 1, 1))  # noqa: DTZ001 - naive on purpose: it must be refused


@pytest.mark.parametrize(("start", "end", "why"), [
    (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 1, 1, tzinfo=UTC), "outside"),  # next month
    (datetime(2025, 12, 31, 23, tzinfo=UTC), JAN, "outside"),  # previous month
    (w(1), w(1), "after the window start"),  # empty window
])
def test_windows_outside_the_period_are_rejected(start, end, why):
    with pytest.raises(ValueError, match=why):
        PeriodRater(ONE_FLAT, "c", "m", JAN).update(start, end, D(1), cause="window_fired",
                                                   revision=0)


def test_unknown_cause_and_period_start_not_at_a_month_start_are_rejected():
    with pytest.raises(ValueError, match="cause"):
        PeriodRater(ONE_FLAT, "c", "m", JAN).update(w(0), w(1), D(1), cause="oops", revision=0)
    with pytest.raises(ValueError, match="not the start of a billing period"):
        PeriodRater(ONE_FLAT, "c", "m", w(1))


def test_an_unchanged_quantity_returns_none_and_a_new_zero_window_returns_a_zero_charge():
    rater = PeriodRater(ONE_TIERED, "c", "m", JAN)
    first = rater.update(w(0), w(1), D(0), cause="window_fired", revision=0)
    assert first is not None and first.amount == 0 and first.quantity_delta == 0
    rater.update(w(1), w(2), D(10), cause="window_fired", revision=0)
    assert rater.update(w(1), w(2), D(10), cause="late_revision", revision=1) is None
    assert rater.update(w(0), w(1), D(0), cause="late_revision", revision=1) is None


def test_an_earlier_window_after_later_ones_shifts_their_tier_positions_and_says_so():
    rater = PeriodRater(ONE_TIERED, "c", "m", JAN)
    feed(rater, [(5, 900), (6, 200)])  # 90 + (100 × 0.10 + 100 × 0.08) = 108
    late = rater.update(w(2), w(3), D(100), cause="late_event", revision=0)
    # Rate = P(1200) = 100 + 200 × 0.08 = 116 → charge 8
    assert late.amount == D("8.00") and rater.rate == D("116.00")
    calc = late.calculation
    assert calc["cumulative"] == {"before": "0", "after": "100", "after_previous": "0"}
    assert calc["window_amount"]["after"] == "10.00"
    assert "out of order" in calc["note"] and "2 later window(s)" in calc["note"]
    shifted = {s["window_start"]: s for s in calc["shifted_windows"]}
    # 05:00 now starts at 100: 900 → 100 × 0 + 900 in tier 1 still = 90 (unchanged, not listed)
    assert set(shifted) == {"2026-01-01T06:00:00Z"}
    assert shifted["2026-01-01T06:00:00Z"]["amount_old"] == "18.00"
    assert shifted["2026-01-01T06:00:00Z"]["amount_new"] == "16.00"


def test_the_explanation_holds_everything_an_analyst_needs():
    rater = PeriodRater(ONE_TIERED, "acme", "m", JAN)
    feed(rater, [(0, 600)])
    ch = rater.update(w(1), w(2), D(634), cause="window_fired", revision=0)
    calc = ch.calculation
    assert calc["window"] == {"start": "2026-01-01T01:00:00Z", "end": "2026-01-01T02:00:00Z"}
    assert calc["quantity"] == {"before": None, "after": "634", "delta": "634"}
    assert calc["cumulative"]["before"] == "600" and calc["cumulative"]["after"] == "1234"
    assert (calc["price_book_id"], calc["price_version"], calc["model"]) == ("pb", "v1", "tiered")
    assert [(t["tier"], t["units"], t["amount"]) for t in calc["tiers"]] == [
        (1, "400", "40.00"), (2, "234", "18.72")]
    assert calc["rate_before"] == "60.00" and calc["rate_after"] == "118.72"
    assert calc["amount"] == "58.72" and calc["cause"] == "window_fired"
    assert "P_v1(600 + 634) − P_v1(600)" in calc["formula"]
    row = ch.to_row()
    assert set(row) >= {"charge_id", "customer_id", "meter", "period_start", "window_start",
                        "window_end", "currency", "quantity_delta", "amount", "price_book_id",
                        "price_version", "calculation", "cause", "revision"}
    assert row["currency"] == "USD" and row["amount"] == D("58.72")


def test_charge_ids_are_deterministic_and_distinguish_every_key_part():
    base = ("c", "m", JAN, w(1), "window_fired", 0)
    assert charge_id(*base) == charge_id(*base)
    variants = [("c2", "m", JAN, w(1), "window_fired", 0), ("c", "m2", JAN, w(1), "window_fired", 0),
                ("c", "m", datetime(2026, 2, 1, tzinfo=UTC), w(1), "window_fired", 0),
                ("c", "m", JAN, w(2), "window_fired", 0), ("c", "m", JAN, w(1), "rerate", 0),
                ("c", "m", JAN, w(1), "window_fired", 1), ("c|m", "", JAN, w(1), "window_fired", 0)]
    ids = {charge_id(*v) for v in variants} | {charge_id(*base)}
    assert len(ids) == len(variants) + 1


def test_a_restored_rater_continues_where_the_persisted_one_stopped():
    a = PeriodRater(ONE_VOLUME, "c", "m", JAN)
    feed(a, [(0, 500), (1, 400)])
    st_ = a.state()
    b = PeriodRater(ONE_VOLUME, "c", "m", JAN, windows=st_["windows"], charged=st_["charged"])
    ca = a.update(w(2), w(3), D(200), cause="window_fired", revision=0)
    cb = b.update(w(2), w(3), D(200), cause="window_fired", revision=0)
    assert ca.amount == cb.amount == D("-2.00") and ca.charge_id == cb.charge_id


def test_a_restored_rater_settles_a_gap_between_charged_and_rate():
    # e.g. a charge row was lost before the state was persisted: the next change settles it
    r = PeriodRater(ONE_FLAT, "c", "m", JAN, windows={w(0): D(100)}, charged=D("5.00"))
    ch = r.update(w(0), w(1), D(100), cause="rerate", revision=1)
    assert ch.amount == D("3.00") and "differed" in ch.calculation["note"]
    assert r.update(w(0), w(1), D(100), cause="rerate", revision=2) is None


# --- max aggregation ------------------------------------------------------------------------


def test_max_meters_price_the_peak_window_as_a_whole():
    rater = PeriodRater(ONE_VOLUME, "c", "m", JAN, aggregation="max")
    c = feed(rater, [(0, 800), (1, 1200), (2, 300)])
    assert [x.amount for x in c] == [D("80.00"), D("16.00"), D(0)]  # 80 → 96 → 96
    assert rater.rate == D("96.00") == rate_period(ONE_VOLUME, "m", rater.windows, aggregation="max")
    down = rater.update(w(1), w(2), D(100), cause="late_revision", revision=9)  # peak revised down
    assert rater.rate == D("80.00") and down.amount == D("-16.00")
    assert down.calculation["max"]["after"] == {"window_start": "2026-01-01T00:00:00Z",
                                                "quantity": "800"}


def test_max_meters_use_the_version_of_the_earliest_window_holding_the_max():
    windows = {datetime(2026, 1, 10, tzinfo=UTC): D(50), datetime(2026, 1, 16, tzinfo=UTC): D(50)}
    # tie: the earlier window (v1, 0.10) wins over the later one (v2, 0.05)
    assert rate_period(VERSIONED, "m", windows, aggregation="max") == D("5.00")


# --- property tests -------------------------------------------------------------------------

prices = st.decimals(min_value=0, max_value=100, places=4)


@st.composite
def price_specs(draw):
    kind = draw(st.sampled_from(["flat", "tiered", "volume", "package"]))
    if kind == "flat":
        return {"model": "flat", "unit_price": str(draw(prices))}
    if kind == "package":
        return {"model": "package", "package_size": str(draw(st.decimals("0.5", "500", places=1))),
                "package_price": str(draw(prices))}
    n = draw(st.integers(0, 3))
    edges = sorted(draw(st.sets(st.decimals("0.5", "5000", places=1), min_size=n, max_size=n)))
    ps = draw(st.lists(prices, min_size=n + 1, max_size=n + 1))
    tiers = [{"up_to": str(e), "unit_price": str(p)} for e, p in zip(edges, ps, strict=False)]
    return {"model": kind, "tiers": [*tiers, {"unit_price": str(ps[-1])}]}


@st.composite
def books(draw):
    n = draw(st.integers(1, 3))
    # first version at the period start, later ones at random hours (some on, some inside windows)
    offsets = sorted(draw(st.sets(st.integers(1, 744 * 60 - 1), min_size=n - 1, max_size=n - 1)))
    effs = [JAN] + [JAN + timedelta(minutes=m) for m in offsets]
    return book(*[(f"v{i}", e.isoformat(), draw(price_specs())) for i, e in enumerate(effs)])


quantities = st.decimals(min_value=0, max_value=3000, places=3)


@st.composite
def update_sequences(draw):
    """Final window quantities plus a shuffled sequence of updates ending at those values."""
    hours = draw(st.lists(st.integers(0, 743), min_size=1, max_size=12, unique=True))
    final = {h: draw(quantities) for h in hours}
    updates = [(h, draw(quantities)) for h in hours for _ in range(draw(st.integers(0, 2)))]
    updates = draw(st.permutations(updates + [(h, q) for h, q in final.items()]))
    # make sure every window's LAST update is its final value
    seen: dict[int, int] = {}
    for i, (h, _) in enumerate(updates):
        seen[h] = i
    updates = [(h, final[h]) if seen[h] == i else (h, q) for i, (h, q) in enumerate(updates)]
    return final, updates


def run(bk, updates, aggregation):
    rater = PeriodRater(bk, "cust", "m", JAN, aggregation)
    charges = []
    revs: dict[int, int] = {}
    for h, q in updates:
        rev = revs[h] = revs.get(h, -1) + 1
        ch = rater.update(w(h), w(h) + H, q, cause="window_fired" if rev == 0 else "late_revision",
                          revision=rev)
        if ch is not None:
            charges.append(ch)
    return rater, charges


def total(charges):
    t = D(0)
    for c in charges:
        t = CTX.add(t, c.amount)
    return t


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(books(), update_sequences(), st.sampled_from(["sum", "count", "max"]))
def test_sum_of_deltas_equals_rate_of_the_final_windows_whatever_the_order(bk, seq, aggregation):
    final, updates = seq
    rater, charges = run(bk, updates, aggregation)
    expected = rate_period(bk, "m", {w(h): q for h, q in final.items()}, aggregation=aggregation)
    assert total(charges) == expected  # exact Decimal equality
    assert rater.rate == expected == rater.charged
    for c in charges:  # every explanation renders and agrees with the charge
        assert D(c.calculation["amount"]) == c.amount


@SETTINGS
@given(books(), update_sequences(), st.sampled_from(["sum", "max"]))
def test_the_same_updates_twice_give_identical_charge_ids_and_amounts(bk, seq, aggregation):
    _, updates = seq
    _, a = run(bk, updates, aggregation)
    _, b = run(bk, updates, aggregation)
    assert [(c.charge_id, c.amount, c.calculation) for c in a] == \
           [(c.charge_id, c.amount, c.calculation) for c in b]


@SETTINGS
@given(books(), update_sequences(), st.integers(0, 30), st.sampled_from(["sum", "max"]))
def test_restoring_from_persisted_state_mid_stream_changes_nothing(bk, seq, cut, aggregation):
    final, updates = seq
    cut = min(cut, len(updates))
    rater, first = run(bk, updates[:cut], aggregation)
    state = rater.state()
    restored = PeriodRater(bk, "cust", "m", JAN, aggregation, windows=state["windows"],
                           charged=state["charged"])
    rest = []
    for i, (h, q) in enumerate(updates[cut:]):
        ch = restored.update(w(h), w(h) + H, q, cause="rerate", revision=i)
        if ch is not None:
            rest.append(ch)
    expected = rate_period(bk, "m", {w(h): q for h, q in final.items()}, aggregation=aggregation)
    assert CTX.add(total(first), total(rest)) == expected


def test_revising_the_peak_window_up_raises_the_max_rate():
    # regression: the peak window itself revised upwards must re-price the period
    rater = PeriodRater(ONE_FLAT, "c", "m", JAN, aggregation="max")
    feed(rater, [(0, 10), (1, 5)])
    up = rater.update(w(0), w(1), D(20), cause="late_revision", revision=1)
    assert up.amount == D("0.80") and rater.rate == D("1.60")


@given(st.text(max_size=20), st.text(max_size=20), st.integers(0, 743),
       st.sampled_from(["window_fired", "late_revision", "late_event", "rerate"]),
       st.integers(0, 10**6))
def test_the_rater_fast_charge_ids_equal_uuid5_of_the_documented_key(customer, meter, hour, cause, rev):
    import json
    import uuid

    from pricing.charges import CHARGE_ID_NAMESPACE, ChargeIdFactory

    name = json.dumps([customer, meter, 1767225600000, 1767225600000 + hour * 3_600_000, cause, rev],
                      separators=(",", ":"), ensure_ascii=False)
    expected = uuid.uuid5(CHARGE_ID_NAMESPACE, name)
    assert charge_id(customer, meter, JAN, w(hour), cause, rev) == expected
    fast = ChargeIdFactory(customer, meter, JAN)(w(hour), cause, rev)
    assert fast == expected and fast.version == 5 and str(fast) == str(expected)
