"""`meterflow rerate` on a real PostgreSQL: after a price book version with a past effective_from
is loaded, it appends exactly the difference between the old and the new pricing (one charge per
(customer, meter, period), cause 'rerate', the reason recorded); a second run appends nothing;
--dry-run writes nothing; a window whose raw events disagree with its aggregate gets a 'rerate'
revision."""

from __future__ import annotations

from decimal import Decimal

import pytest
import typer
from typer.testing import CliRunner

from cli.rerating import rerate
from jobs.consumers.rerating import run_rerating
from pricing.book import price_book_from_data
from pricing.rater import rate_period
from pricing.reference import Customer
from sinks.db import connect
from sinks.pricebook_store import store_customers, store_price_books
from tests.e2e.test_rerating_support import (
    charged,
    final_windows,
    late_record,
    produce,
    snapshot,
    utc,
)
from tests.integration.metering_util import private_metering_settings

pytestmark = pytest.mark.integration

V1 = {"name": "v1", "effective_from": "2026-01-01T00:00:00Z", "prices": [
    {"meter": "api_calls", "model": "tiered",
     "tiers": [{"up_to": "1000", "unit_price": "0.10"}, {"unit_price": "0.08"}]},
    {"meter": "seats", "model": "volume",
     "tiers": [{"up_to": "10", "unit_price": "12"}, {"unit_price": "10"}]},
    {"meter": "storage_gb_hours", "model": "flat", "unit_price": "0.0002"},
]}
V2 = {"name": "v2", "effective_from": "2026-10-15T00:00:00Z", "prices": [  # loaded late, in the past
    {"meter": "api_calls", "model": "tiered",
     "tiers": [{"up_to": "1000", "unit_price": "0.09"}, {"unit_price": "0.05"}]},
    {"meter": "seats", "model": "volume",
     "tiers": [{"up_to": "10", "unit_price": "11"}, {"unit_price": "9"}]},
    {"meter": "storage_gb_hours", "model": "flat", "unit_price": "0.0002"},
]}


def book(*versions: dict):
    return price_book_from_data({"price_book_id": "bk", "currency": "USD", "versions": list(versions)})


def cli(settings, *args: str):
    app = typer.Typer()
    app.command("rerate")(rerate)
    app.command("noop")(lambda: None)  # a group, so that `rerate` is a sub-command
    import os

    env = {"METERFLOW__POSTGRES__DATABASE": settings.postgres.database}
    res = CliRunner().invoke(app, ["rerate", *args], env={**os.environ, **env})
    return res


@pytest.fixture()
def priced():
    with private_metering_settings(partitions=1) as settings:
        with connect(settings) as conn:
            store_price_books(conn, [book(V1)])
            store_customers(conn, [Customer(customer_id=c, price_book_id="bk", currency="USD",
                                            tax_region="US-CA") for c in ("acme", "beta")])
            conn.commit()
        # usage in October on both sides of v2's effective_from, and one November window
        recs = []
        for d, h, n in ((3, 10, 6), (12, 8, 4), (16, 9, 5), (20, 14, 7), (28, 23, 3)):
            recs += [late_record(f"acme-{d}-{i}", "acme", "api_calls", utc(2026, 10, d, h, i), "60")
                     for i in range(n)]
            recs += [late_record(f"seat-{d}", "acme", "seats", utc(2026, 10, d, h), str(d))]
        recs += [late_record(f"beta-{i}", "beta", "api_calls", utc(2026, 10, 18, 1, i), "400") for i in range(4)]
        recs += [late_record("acme-nov", "acme", "api_calls", utc(2026, 11, 2, 1), "900")]
        produce(settings, settings.topics.late, recs)
        run_rerating(settings, bounded=True, linger_s=0.5)
        yield settings


def _env_ok(settings) -> bool:
    import os

    from schemas.config import load_settings

    os.environ["METERFLOW__POSTGRES__DATABASE"] = settings.postgres.database
    try:
        return load_settings().postgres.database == settings.postgres.database
    finally:
        del os.environ["METERFLOW__POSTGRES__DATABASE"]


def test_a_past_price_version_is_re_rated_as_exactly_the_difference_once(priced) -> None:
    settings = priced
    assert _env_ok(settings), "the CLI must reach the test database through the environment"
    old = charged(settings)
    with connect(settings) as conn:
        store_price_books(conn, [book(V1, V2)])
        conn.commit()

    # dry run: prints the differences, writes nothing
    before = snapshot(settings)
    r = cli(settings, "--from", "2026-10-01", "--to", "2026-10-31", "--reason", "v2 back-dated", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "would be appended" in r.output and "3 charge(s)" in r.output
    assert snapshot(settings) == before

    r = cli(settings, "--from", "2026-10-01", "--to", "2026-10-31", "--reason", "v2 back-dated")
    assert r.exit_code == 0, r.output
    new_book = book(V1, V2)
    aggs = settings.meter_aggregations
    with connect(settings) as conn:
        rr = conn.execute("""SELECT customer_id, meter, period_start, amount, caused_by, revision
                               FROM rated_charges WHERE cause = 'rerate' ORDER BY 1, 2""").fetchall()
        revs = conn.execute("SELECT count(*) FROM aggregated_usage WHERE source = 'rerate'").fetchone()[0]
    assert revs == 0  # quantities agree with the raw events: only prices changed
    oct_ = utc(2026, 10, 1)
    fw = final_windows(settings)
    expected = {}
    for key in (("acme", "api_calls", oct_), ("acme", "seats", oct_), ("beta", "api_calls", oct_)):
        new_rate = rate_period(new_book, key[1], fw[key], aggregation=aggs[key[1]], customer_id=key[0])
        if new_rate != old[key]:
            expected[key] = new_rate - old[key]
    assert expected  # the test is only meaningful if v2 changes something
    assert {(c, m, p): a for c, m, p, a, _, _ in rr} == expected
    assert all(cb == "v2 back-dated" for *_, cb, _ in rr)
    # the November period is outside the scope: untouched
    assert not any(p.month == 11 for _, _, p, *_ in rr)
    new = charged(settings)
    for key, windows in fw.items():
        if key[2] == oct_:
            assert new[key] == rate_period(new_book, key[1], windows, aggregation=aggs[key[1]], customer_id=key[0])

    # idempotent: a second run appends nothing
    before = snapshot(settings)
    r = cli(settings, "--from", "2026-10-01", "--to", "2026-10-31", "--reason", "v2 back-dated")
    assert r.exit_code == 0, r.output
    assert "0 charge(s)" in r.output
    assert snapshot(settings) == before


def _missed_event_then_rerate(settings, event_id: str, quantity: int, ws, reason: str):
    """Insert a raw event of acme/api_calls the window aggregate never counted, then rerate that day."""
    with connect(settings) as conn:
        conn.execute("""INSERT INTO usage_events (event_id, customer_id, meter, event_time, ingestion_time,
                               quantity, window_start) VALUES (%s, 'acme', 'api_calls', %s, now(), %s, %s)""",
                     (event_id, ws, quantity, ws))
        conn.commit()
    return cli(settings, "--customer", "acme", "--meter", "api_calls", "--from", "2026-10-12", "--to",
               "2026-10-12", "--reason", reason)


def test_a_window_whose_raw_events_disagree_gets_a_rerate_revision_and_charge_ids_stay_unique(priced) -> None:
    settings = priced
    ws = utc(2026, 10, 12, 8)
    # an event the aggregate never counted (e.g. a fixed bug)
    r = _missed_event_then_rerate(settings, "missed-1", 1000, ws, "bug 42: missed events")
    assert r.exit_code == 0, r.output
    with connect(settings) as conn:
        rev = conn.execute("""SELECT revision, quantity, event_count, source FROM aggregated_usage
                               WHERE customer_id = 'acme' AND meter = 'api_calls' AND window_start = %s
                               ORDER BY revision DESC LIMIT 1""", (ws,)).fetchone()
    assert rev == (2, Decimal(1240), 5, "rerate")
    # a second correction of the same window: a new charge id (sequence 2), never a collision
    r = _missed_event_then_rerate(settings, "missed-2", 10, ws, "bug 43")
    assert r.exit_code == 0, r.output
    with connect(settings) as conn:
        rows = conn.execute("""SELECT charge_id, caused_by, revision, calculation->'rerate'->>'sequence'
                                 FROM rated_charges WHERE cause = 'rerate' ORDER BY created_at""").fetchall()
    assert [(cb, rev, seq) for _, cb, rev, seq in rows] == [("bug 42: missed events", 2, "1"), ("bug 43", 3, "2")]
    book_ = book(V1)
    aggs = settings.meter_aggregations
    for key, windows in final_windows(settings).items():
        assert charged(settings)[key] == rate_period(book_, key[1], windows, aggregation=aggs[key[1]],
                                                     customer_id=key[0])
