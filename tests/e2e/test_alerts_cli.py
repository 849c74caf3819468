"""``meterflow alerts`` and ``meterflow balances`` as an operator runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sinks.db import connect
from sinks.ledger import apply_batch
from sinks.pricebook_store import PriceBooks
from tests.integration.dbutil import cli_env, fresh_database
from tests.integration.test_ledger import BOOK, NOV, Offsets, fire, seed_prices

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings():
    with fresh_database() as s:
        with connect(s) as conn:
            seed_prices(conn, BOOK, customers=["cust-00000", "c2"])
            conn.execute("UPDATE customers SET credit_limit = 50, minimum_balance = 5 WHERE customer_id = 'c2'")
            conn.execute("INSERT INTO credits (credit_id, customer_id, currency, amount) "
                         "VALUES ('top-1', 'c2', 'USD', 30)")
            conn.commit()
        yield s


TOPIC = f"alerts-cli-{uuid.uuid4().hex[:8]}"  # a private alerts topic


def mf(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**cli_env(settings), "METERFLOW__TOPICS__ALERTS": TOPIC}
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_a_bad_rules_file_is_one_line_and_changes_nothing(settings, tmp_path) -> None:
    assert mf(settings, "alerts", "rules", "load", str(ROOT / "examples/alert-rules.toml")).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nrule_id = "x"\nkind = "spend"\nlevels = { info = "10", critical = "5" }\n')
    for f in (bad, tmp_path / "missing.toml"):
        r = mf(settings, "alerts", "rules", "load", str(f))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip() and len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 2, r.stderr
    with connect(settings) as conn:
        assert conn.execute("SELECT count(*) FROM alert_rules").fetchone()[0] == 7  # the example's, kept
    r = mf(settings, "alerts", "evaluate", "--customer", "nobody")
    assert r.returncode == 1 and "not loaded" in r.stderr and "Traceback" not in r.stderr


def test_usage_raises_alerts_listed_published_and_balances_shown(settings) -> None:
    off = Offsets()
    with connect(settings, autocommit=True) as conn:
        # cust-00000's own spend levels are 10 / 20 / 40 USD; c2's 30 USD of credits run out at 300 calls
        apply_batch(conn, off.batch([*fire("cust-00000", "api_calls", NOV, "250"),
                                     *fire("c2", "api_calls", NOV, "320")]),
                    consumer="cli", books=PriceBooks(), aggregations={"api_calls": "sum"})
    r = mf(settings, "alerts", "list", "--json")
    assert r.returncode == 0, r.stderr
    got = {(a["customer_id"], a["rule_id"], a["level"]) for a in map(json.loads, r.stdout.splitlines())}
    assert {("cust-00000", "monthly-spend", "info"), ("cust-00000", "monthly-spend", "warning"),
            ("c2", "low-balance", "warning"), ("c2", "low-balance", "critical"),
            ("c2", "minimum-balance", "critical"), ("c2", "low-balance-percent", "critical")} <= got
    assert ("cust-00000", "monthly-spend", "critical") not in got  # 25 USD < 40
    r = mf(settings, "balances", "show", "--customer", "c2")
    assert r.returncode == 0 and "-2" in r.stdout, r.stdout + r.stderr  # 30 − 32
    r = mf(settings, "alerts", "publish")
    assert r.returncode == 0 and f"{len(got)} alert(s) published" in r.stdout, r.stdout + r.stderr
    assert "0 alert(s) published" in mf(settings, "alerts", "publish").stdout
