"""The metering pipeline on Flink's mini-cluster, bounded input, at parallelism 1 and 2.

One input file holds every case, each under its own customer id, in a fixed arrival order; a
"clock" customer's events move the watermark forward between cases. Windows are 1 h, allowed
lateness 1 h, out-of-orderness 0 s, so with window end E the rules are:
    late within lateness  E - 1 ms <= watermark < E - 1 ms + 1 h   -> a revision of the window
    beyond lateness       E - 1 ms + 1 h <= watermark              -> the late side output
The same run also executes the plain DataStream reference (window + allowed_lateness +
side_output_late_data) on the same source; its final windows and counts must be identical.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from pricing.periods import period_start
from schemas.config import load_settings
from tests.pipeline.harness import Results, run_pipeline


def ev(event_id: str, customer: str, when: str, quantity: int | str = 1, meter: str = "api_calls",
       *, spaced: bool = False) -> str:
    """An event in the producers' compact layout, which the JVM fast path validates; ``spaced``
    (json.dumps' default separators) sends it through the Python validator instead. The cases mix
    both, so an event on one path meets watermarks advanced by events on the other."""
    return json.dumps({"event_id": event_id, "event_time": when, "customer_id": customer,
                       "meter": meter, "quantity": quantity}, separators=None if spaced else (",", ":"))


def ms(when: str) -> int:
    return int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() * 1000)


D = "2026-10-31T"
INPUT = [
    # on time: two events in window 10:00
    ev("ontime-1", "ontime", D + "10:01:00Z", 1),
    ev("ontime-2", "ontime", D + "10:05:00Z", 2, spaced=True),
    # the window 10:00 of customer "late" gets an on-time event ...
    ev("late-1", "late", D + "10:10:00Z", 5),
    # duplicate before its window fired
    ev("dup-1", "dup", D + "10:20:00Z", 4),
    ev("dup-1", "dup", D + "10:20:00Z", 4),
    # the same event in the other layout (the Python validator's path): dedup is by event_id
    ev("dup-2", "dup", D + "10:25:00Z", 3),
    ev("dup-2", "dup", D + "10:25:00Z", 3, spaced=True),
    ev("clock-1", "clock", D + "11:12:00Z"),  # watermark 11:12: window 10:00 has fired
    # ... and a late one within lateness (10:59:59.999 <= 11:12 < 11:59:59.999): a revision
    ev("late-2", "late", D + "10:30:00Z", 7, spaced=True),
    # a duplicate arriving after its window fired is still a duplicate, not a late event
    ev("dup-1", "dup", D + "10:20:00Z", 4),
    ev("clock-2", "clock", D + "12:25:00Z"),  # watermark 12:25: window 10:00 is past lateness
    # beyond allowed lateness (11:59:59.999 <= 12:25): to the late side output
    ev("beyond-1", "beyond", D + "10:20:00Z", 9),
    ev("beyond-2", "beyond", D + "10:21:00Z", 9, spaced=True),
    # a future-skewed event is rejected and must not drag the watermark forward
    ev("future-1", "future", "2099-01-01T00:00:00Z", 1),
    ev("future-ok", "future", D + "12:30:00Z", 3),  # still on time after it
    # invalid events
    b"this is not json",
    ev("unknown-meter", "bad", D + "12:31:00Z", 1, meter="gpu_hours"),
    ev("negative", "bad", D + "12:32:00Z", -1),
    json.dumps({"event_time": D + "12:33:00Z", "customer_id": "bad", "meter": "api_calls"}),
    ev("no-offset", "bad", "2026-10-31T12:34:00", 1),
    # a window exactly at a month boundary: 23:00-24:00 is October's, 00:00-01:00 November's
    ev("month-1", "month", D + "23:30:00Z", 2),
    ev("month-2", "month", "2026-11-01T00:00:00Z", 3),
    ev("month-3", "month", "2026-11-01T00:59:59.999Z", 4),
]
EXPECTED_REASONS = {"invalid_json": 1, "unknown_meter": 1, "negative_quantity": 1, "missing_field": 1,
                    "invalid_event_time": 1, "future_event_time": 1}


def _run(tmp_path_factory, parallelism: int) -> Results:
    settings = load_settings(None, time={
        "window_size": "1h", "allowed_lateness": "1h", "max_out_of_orderness": "0s",
        "idleness_timeout": "30s", "dedup_horizon": "2d", "watermark_interval": "200ms",
    })
    # The reference runs at parallelism 1 only: at 2, its window operator sits two exchanges
    # behind the source and its watermark depends on which of two parallel dedup subtasks
    # forwarded the watermark first — its own result is not deterministic there. The fast job
    # classifies right after the first exchange, where only the one busy source subtask counts.
    res = run_pipeline(settings, PADDING[parallelism] + INPUT, tmp_path_factory.mktemp(f"p{parallelism}"),
                       parallelism=parallelism, with_reference=parallelism == 1)
    res.padding = PADDING[parallelism]  # type: ignore[attr-defined]  # this module's own extra on the result
    return res


# At parallelism 2 the file's one split goes to one source subtask; the other has nothing to read,
# but until its task is running (its Python validator opened) it holds every downstream watermark
# at its minimum — on a loaded machine long enough for the lateness cases to run on time. A
# prefix of events in an early window (customer "pad", 09:00-10:00, before every case) keeps the
# busy subtask busy until the other one has started; it changes no case.
PAD = 20_000
PADDING = {
    1: [],
    2: [ev(f"pad-{i}", "pad", f"{D}09:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z")
        for i in range(PAD)],
}


@pytest.fixture(scope="module")
def results_p1(tmp_path_factory) -> Results:
    return _run(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def results_p2(tmp_path_factory) -> Results:
    return _run(tmp_path_factory, 2)


@pytest.fixture(params=[1, 2], ids=["parallelism-1", "parallelism-2"])
def results(request) -> Results:
    return request.getfixturevalue(f"results_p{request.param}")


def window(res: Results, customer: str, start: str) -> tuple[Decimal, int, Decimal]:
    return res.final_windows()[(customer, "api_calls", ms(start))]


def test_on_time_events_are_summed_in_their_window(results: Results) -> None:
    assert window(results, "ontime", D + "10:00:00Z") == (Decimal(3), 2, Decimal(2))
    assert {"ontime-1", "ontime-2"} <= results.accepted_ids()


def test_a_late_event_within_lateness_gives_a_revision_of_its_window(results: Results) -> None:
    late = results.late_within()
    assert [r["event_id"] for r in late] == ["late-2"]
    assert window(results, "late", D + "10:00:00Z") == (Decimal(12), 2, Decimal(7))


def test_an_event_beyond_lateness_goes_to_the_side_output_with_window_and_watermark(results: Results) -> None:
    # one from each validation path
    assert results.late_ids() == {"beyond-1", "beyond-2"}
    for late in results.late:
        assert late["window_start_ms"] == ms(D + "10:00:00Z")
        assert late["window_end_ms"] == ms(D + "11:00:00Z")
        assert late["watermark"].startswith("2026-10-31 12:25:00")
        assert json.loads(late["payload"])["event_id"] == late["event_id"]
    assert ("beyond", "api_calls", ms(D + "10:00:00Z")) not in results.final_windows()
    assert not {"beyond-1", "beyond-2"} & results.accepted_ids()


def test_duplicates_are_counted_once_even_after_their_window_fired(results: Results) -> None:
    assert window(results, "dup", D + "10:00:00Z") == (Decimal(7), 2, Decimal(4))
    # which copy of dup-2 counts is the one that reaches the dedup operator first (the two
    # validation paths are two network channels); either way it is counted once
    assert results.duplicates == {"dup-1": 2, "dup-2": 1}
    assert "dup-1" not in results.late_ids()


def test_each_invalid_kind_goes_to_the_dlq_with_its_reason(results: Results) -> None:
    assert dict(results.reasons()) == EXPECTED_REASONS
    bad = {r["reason"]: r for r in results.invalid}
    assert bad["invalid_json"]["payload"] == "this is not json"


def test_a_future_skewed_event_does_not_drag_the_watermark(results: Results) -> None:
    assert "future-ok" in results.accepted_ids()
    assert not [r for r in results.late_within() if r["customer_id"] == "future"]
    assert window(results, "future", D + "12:00:00Z") == (Decimal(3), 1, Decimal(3))


def test_windows_at_a_month_boundary_belong_to_their_own_billing_period(results: Results) -> None:
    oct_w = window(results, "month", D + "23:00:00Z")
    nov_w = window(results, "month", "2026-11-01T00:00:00Z")
    assert oct_w == (Decimal(2), 1, Decimal(2))
    assert nov_w == (Decimal(7), 2, Decimal(4))  # 00:59:59.999 still belongs to 00:00-01:00
    assert period_start(datetime(2026, 10, 31, 23, tzinfo=UTC)) == datetime(2026, 10, 1, tzinfo=UTC)
    assert period_start(datetime(2026, 11, 1, 0, tzinfo=UTC)) == datetime(2026, 11, 1, tzinfo=UTC)


def test_every_input_line_is_accounted_for_exactly_once(results: Results) -> None:
    accepted = results.accepted_ids()
    assert len([r for r in results.ledger if r["kind"] == "event"]) == len(accepted)
    total = len(accepted) + len(results.late) + sum(d - 0 for d in results.duplicates.values()) + len(results.invalid)
    assert total == len(INPUT) + len(results.padding)
    if results.padding:
        assert window(results, "pad", D + "09:00:00Z") == (Decimal(PAD), PAD, Decimal(1))


def test_the_fast_job_matches_the_datastream_reference(results_p1: Results) -> None:
    """Identical final per-window quantities and identical accepted/duplicate/rejected/late counts."""
    results = results_p1
    assert results.final_windows() == results.ref_final_windows()
    assert len(results.invalid) == len(results.ref_invalid)
    assert sorted(r["reason"] for r in results.invalid) == sorted(r["reason"] for r in results.ref_invalid)
    assert sum(results.duplicates.values()) == len(results.ref_duplicates)
    assert results.late_ids() == {r["event_id"] for r in results.ref_late}
