"""The ledger writer's outage policy (sinks/batchloop.py) without a server: which errors are
outages (retried), which are poison (dead-lettered), and the backoff and exit of the retry loop
on an injected clock."""

from __future__ import annotations

import psycopg
import pytest

from sinks.batchloop import Postgres, PostgresOutage, RetryPolicy, Status, is_outage, is_poison


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def refused() -> psycopg.Connection:
    raise psycopg.OperationalError("connection failed: Connection refused")


def test_connection_errors_are_outages_and_data_errors_are_poison() -> None:
    assert is_outage(psycopg.OperationalError("connection refused"), None)
    assert not is_poison(psycopg.OperationalError("connection refused"), None)
    # a NUL refused by psycopg itself (no SQLSTATE) is the record's fault
    conn_ok = type("C", (), {"closed": False, "broken": False})()
    nul = psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    assert is_poison(nul, conn_ok) and not is_outage(nul, conn_ok)
    assert is_poison(ValueError("unknown ledger message kind"), None)
    assert not is_poison(RuntimeError("a bug"), None)


def test_an_outage_is_retried_with_backoff_reported_and_ends_past_the_limit(tmp_path) -> None:
    clock = Clock()
    status = Status(tmp_path / "s.json")
    pg = Postgres(refused, RetryPolicy(outage_exit_after_s=10, backoff_initial_s=0.5, backoff_max_s=4),
                  status, clock=clock, sleep=clock.sleep)
    with pytest.raises(PostgresOutage, match="unreachable for 10 s"):
        pg.run(lambda conn: None)
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 2.5]  # doubling, capped, never past the limit
    assert status.state == "postgres_outage" and status.outage_retries_total == 6
    assert '"state": "postgres_outage"' in (tmp_path / "s.json").read_text()


def test_a_connect_that_succeeds_after_an_outage_runs_the_work_once(tmp_path) -> None:
    clock = Clock()
    calls = {"connect": 0, "work": 0}

    class Conn:
        closed = broken = False

        def close(self) -> None:
            self.closed = True

    def flaky() -> Conn:
        calls["connect"] += 1
        if calls["connect"] < 3:
            raise psycopg.OperationalError("the database system is starting up")
        return Conn()

    def work(conn: Conn) -> str:
        calls["work"] += 1
        return "done"

    status = Status(None)
    pg = Postgres(flaky, RetryPolicy(outage_exit_after_s=60), status, clock=clock, sleep=clock.sleep)
    assert pg.run(work) == (True, "done")
    assert calls == {"connect": 3, "work": 1}
    assert status.state == "running" and status.reconnects_total == 1


def test_work_cut_by_an_outage_is_not_run_again_blindly(tmp_path) -> None:
    """The connection broke inside the work (its transaction may have committed): after the
    reconnect the caller is told, and re-reads the offsets instead."""
    clock = Clock()

    class Conn:
        def __init__(self) -> None:
            self.closed = False
            self.broken = False

        def close(self) -> None:
            self.closed = True

    runs = []

    def work(conn: Conn) -> None:
        runs.append(conn)
        conn.broken = True
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    pg = Postgres(Conn, RetryPolicy(outage_exit_after_s=60), Status(None), clock=clock, sleep=clock.sleep)
    assert pg.run(work) == (False, None)
    assert len(runs) == 1


class _Answering:
    """A connection whose server answers: it records what it was asked."""

    closed = broken = False

    def __init__(self) -> None:
        self.sql: list[str] = []

    def execute(self, sql: str) -> None:
        self.sql.append(sql)

    def rollback(self) -> None:
        self.sql.append("ROLLBACK")

    def close(self) -> None:
        self.closed = True


def test_an_idle_check_asks_postgres_once_and_leaves_no_transaction_open() -> None:
    clock = Clock()
    conn = _Answering()
    status = Status(None)
    pg = Postgres(lambda: conn, RetryPolicy(outage_exit_after_s=60), status, clock=clock, sleep=clock.sleep)
    clock.t = 7.0
    assert pg.idle_s() == 7.0
    pg.check()
    assert conn.sql == ["SELECT 1", "ROLLBACK"]
    assert pg.idle_s() == 0.0 and status.idle_checks_total == 1 and status.state != "postgres_outage"


def test_an_outage_that_begins_while_no_data_flows_ends_the_loop_past_the_limit(tmp_path) -> None:
    """The writer of a quiet topic meets Postgres only through its idle check: that check must
    report the outage and give up after ``outage_exit_after`` like a write would."""
    clock = Clock()
    status = Status(tmp_path / "s.json")
    pg = Postgres(refused, RetryPolicy(outage_exit_after_s=2, backoff_initial_s=0.5, backoff_max_s=1),
                  status, clock=clock, sleep=clock.sleep)
    with pytest.raises(PostgresOutage, match="unreachable for 2 s"):
        pg.check()
    assert status.state == "postgres_outage" and status.idle_checks_total == 0
