"""A ledger writer stopped in the middle of a stream and started again raises every alert exactly
once: the same alert ids as a run that was never interrupted (real Kafka, private topics)."""

from __future__ import annotations

import secrets

import pytest

from billing.alerts import rules_from_data
from jobs.consumers.ledger_writer import metering_roles, run_ledger
from jobs.tools.topics import ensure_topics
from schemas.config import load_settings
from sinks.alerts import store_rules
from sinks.db import connect
from tests.integration.dbutil import fresh_database
from tests.integration.ledger_input import ledger_input, produce_keyed
from tests.integration.metering_util import load_prices, with_private_names
from tests.integration.test_ledger import NOV

pytestmark = pytest.mark.integration
RULES = {"rules": [
    {"rule_id": "calls", "kind": "usage", "meter": "api_calls",
     "levels": {"info": "300", "warning": "900", "critical": "1500"}},
    {"rule_id": "spend", "kind": "spend", "levels": {"info": "1", "warning": "5"}},
    {"rule_id": "low", "kind": "balance", "levels": {"critical": "0"}},
]}


def run_for_batches(s, n: int, kw: dict) -> int:
    """Run the writer until it has applied ``n`` batches, then stop it (as SIGTERM does)."""
    batches = 0

    def count(*_a: object) -> None:
        nonlocal batches
        batches += 1

    run_ledger(lambda: connect(s), on_batch=count, stop=lambda: batches >= n, **kw)
    return batches


def test_a_writer_restarted_mid_stream_raises_every_alert_once() -> None:
    base = with_private_names(load_settings(), f"it-al-{secrets.token_hex(4)}", 2)
    ensure_topics(base)
    customers = [f"cust-{i:05d}" for i in range(4)]
    produce_keyed(base, base.topics.ledger, ledger_input(customers, NOV, 6, 10, seed=5))
    runs = []
    for interrupted in (False, True):
        with fresh_database(base) as s:
            load_prices(s, customers)
            with connect(s) as conn:
                store_rules(conn, rules_from_data(RULES))
            kw = dict(bootstrap_servers=s.kafka.bootstrap_servers,
                      roles=metering_roles(s.topics.ledger, s.topics.duplicates), consumer="metering-ledger",
                      aggregations=s.meter_aggregations, bounded=True, max_batch=150)
            if interrupted:
                assert run_for_batches(s, 3, kw) == 3
                with connect(s) as conn:
                    partial = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
                assert partial > 0  # stopped with alerts made, and more to come
            run_ledger(lambda s=s: connect(s), **kw)
            with connect(s) as conn:
                ids = [r[0] for r in conn.execute("SELECT alert_id FROM alerts")]
                outbox = conn.execute("SELECT count(*) FROM alert_outbox").fetchone()[0]
        assert len(ids) == len(set(ids)) == outbox
        runs.append(set(ids))
    assert runs[0] == runs[1] and len(runs[0]) > partial
