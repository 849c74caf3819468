"""Outages (issue 14): PostgreSQL stopped and restarted under a streaming ledger writer. The
writer retries with backoff and says so (log + status file); past [ledger] outage_exit_after it
exits non-zero, and a restarted writer resumes exactly where Postgres's offsets say: Postgres
ends equal to an undisturbed run. `meterflow run metering` whose writer dies ends non-zero.

A private Postgres server (tests/integration/private_postgres.py): the shared one is never stopped."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys

import pytest

from jobs.flink.run import run_ledger_writer
from jobs.tools.topics import ensure_topics
from schemas.config import REPO_ROOT, load_settings
from tests.e2e.test_ledger_writers import read_status, start_writer, wait_for, writer_env
from tests.e2e.test_rerating_support import assert_sigma_equals_rate, snapshot, utc
from tests.integration.ledger_input import H, caught_up, ledger_input, produce_keyed
from tests.integration.metering_util import load_prices, with_private_names
from tests.integration.private_postgres import database_on, private_postgres

pytestmark = pytest.mark.integration

NOV = utc(2026, 11, 1)
CUSTOMERS = ["c1", "c2", "c3"]


@pytest.fixture(scope="module")
def pg():
    with private_postgres() as server:
        yield server


def stop(p: subprocess.Popen) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    return p.wait(timeout=60)


def test_postgres_stopped_and_restarted_under_a_streaming_writer_changes_nothing(pg, tmp_path) -> None:
    base = with_private_names(load_settings(), f"it-{secrets.token_hex(4)}", 2)
    settings = database_on(pg, base, "outage")
    ensure_topics(settings)
    load_prices(settings, CUSTOMERS)
    topics = [settings.topics.ledger, settings.topics.duplicates]
    status = tmp_path / "w1.json"

    produce_keyed(settings, settings.topics.ledger, ledger_input(CUSTOMERS, NOV, 3, 4, seed=1, tag="p1-"))
    w1 = start_writer(settings, status, tmp_path / "w1.log", METERFLOW__LEDGER__OUTAGE_EXIT_AFTER="10m",
                      METERFLOW__LEDGER__RETRY_BACKOFF_MAX="1s")
    try:
        wait_for(lambda: caught_up(settings, topics), "the first part to be applied", (w1,))
        # 1. an outage shorter than the limit: retried, reported, survived
        pg.stop()
        produce_keyed(settings, settings.topics.ledger, ledger_input(CUSTOMERS, NOV + 3 * H, 3, 4, seed=2, tag="p2-"))
        wait_for(lambda: read_status(status).get("state") == "postgres_outage"
                 and read_status(status).get("outage_retries_total", 0) >= 2, "the outage to be reported", (w1,))
        pg.start()
        wait_for(lambda: caught_up(settings, topics), "the second part to be applied", (w1,))
        wait_for(lambda: read_status(status).get("state") == "running", "the writer to report it is back", (w1,))
        assert read_status(status)["reconnects_total"] >= 1
        assert stop(w1) == 0
        log1 = (tmp_path / "w1.log").read_text()
        assert "PostgreSQL unavailable" in log1 and "PostgreSQL is back" in log1

        # 2. an outage longer than the limit: the writer exits non-zero, with one clear line
        w2 = start_writer(settings, tmp_path / "w2.json", tmp_path / "w2.log",
                          METERFLOW__LEDGER__OUTAGE_EXIT_AFTER="2s", METERFLOW__LEDGER__RETRY_BACKOFF_MAX="1s")
        wait_for(lambda: read_status(tmp_path / "w2.json").get("partitions"), "w2 to be assigned", (w2,))
        pg.stop()
        produce_keyed(settings, settings.topics.ledger, ledger_input(CUSTOMERS, NOV + 6 * H, 3, 4, seed=3, tag="p3-"))
        assert w2.wait(timeout=180) == 1
        log2 = (tmp_path / "w2.log").read_text()
        assert "ledger writer stopped: PostgreSQL unreachable" in log2 and "Traceback" not in log2
        assert read_status(tmp_path / "w2.json")["state"] == "failed"
        # 3. the supervisor restarts it once Postgres is back: it resumes at the stored offsets
        pg.start()
        w3 = start_writer(settings, tmp_path / "w3.json", tmp_path / "w3.log")
        wait_for(lambda: caught_up(settings, topics), "the third part to be applied", (w3,))
        assert stop(w3) == 0
    finally:
        if w1.poll() is None:
            w1.kill()
    assert_sigma_equals_rate(settings)

    undisturbed = database_on(pg, base, "undisturbed")
    load_prices(undisturbed, CUSTOMERS)
    run_ledger_writer(undisturbed, bounded=True)
    assert snapshot(settings) == snapshot(undisturbed)


def _metering(pg, tmp_path, *args: str) -> tuple[subprocess.Popen, object, object]:
    import os

    base = with_private_names(load_settings(), f"it-{secrets.token_hex(4)}", 1)
    settings = database_on(pg, base, f"metering_{secrets.token_hex(3)}")
    status = tmp_path / "writer.json"
    env = writer_env(settings, status, METERFLOW__LEDGER__OUTAGE_EXIT_AFTER="2s",
                     METERFLOW__LEDGER__RETRY_BACKOFF_MAX="1s",
                     METERFLOW__TOPICS__EVENTS=settings.topics.events, METERFLOW__TOPICS__DLQ=settings.topics.dlq,
                     METERFLOW__TOPICS__LATE=settings.topics.late,
                     METERFLOW__KAFKA__CONSUMER_GROUP=settings.kafka.consumer_group,
                     METERFLOW__FLINK__CHECKPOINT_DIR=str(tmp_path / "checkpoints"))
    env["PATH"] = "/usr/bin:/bin:" + str(REPO_ROOT / ".venv" / "bin")
    if os.environ.get("JAVA_HOME"):
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    log = tmp_path / "metering.log"
    p = subprocess.Popen([sys.executable, "-m", "cli.app", "run", "metering", *args], cwd=REPO_ROOT,
                         env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return p, status, log


def test_run_metering_ends_non_zero_when_its_ledger_writer_dies(pg, tmp_path) -> None:
    p, status, log = _metering(pg, tmp_path)
    try:
        # the writer has seeked and sits idle (no events flow): only its idle check meets Postgres
        wait_for(lambda: read_status(status).get("state") == "running" and read_status(status).get("partitions")
                 and read_status(status).get("idle_checks_total", 0) >= 1,
                 "the ledger writer to run and idle", (p,), timeout=300)
        pg.stop()
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
        pg.start()
    assert rc == 1, log.read_text()[-3000:]
    out = log.read_text()
    assert "the ledger writer stopped" in out and "PostgreSQL unreachable" in out


def test_a_bounded_run_whose_ledger_writer_dies_ends_non_zero_with_one_line(pg, tmp_path) -> None:
    p, status, log = _metering(pg, tmp_path, "--bounded")
    pg.stop()
    try:
        rc = p.wait(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
        pg.start()
    out = log.read_text()
    assert rc == 1, out[-3000:]
    assert "the ledger writer stopped" in out and "PostgreSQL unreachable" in out
    assert "Traceback" not in out
