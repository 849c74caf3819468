"""The local stack's Postgres authentication (docs/STACK.md): a new stack uses scram-sha-256 for
every connection, never trust; the superuser's random password lives only in the stack's libpq
password file (mode 0600); the owner and app roles exist, and the documented start works with
one command: `stack.sh up`, `meterflow db migrate` (as the owner), then any command as the app.

Runs on a throw-away stack (own directory, free ports), never the shared one."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import psycopg
import pytest

from schemas.config import REPO_ROOT
from tests.conftest import run_stack, stack_info

from .test_stack_script import _temp_stack_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fresh_stack():
    env, stack_dir = _temp_stack_env()
    env.pop("PGPASSFILE", None)
    env.pop("PGPASSWORD", None)
    try:
        up = run_stack("up", env)
        assert up.returncode == 0, f"fresh stack did not come up:\n{up.stdout}\n{up.stderr}"
        yield stack_info(env), up.stderr
    finally:
        run_stack("down", env)
        shutil.rmtree(stack_dir, ignore_errors=True)


def _connect(port: int, user: str, passfile: str | None, host: str = "127.0.0.1", dbname: str = "billing"):
    return psycopg.connect(host=host, port=port, user=user, dbname=dbname, connect_timeout=5,
                           passfile=passfile or os.devnull, password=None)


def test_the_superuser_needs_the_password_kept_in_a_private_file(fresh_stack) -> None:
    info, out = fresh_stack
    passfile = info.stack_dir / "postgres" / "pgpass"
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert f"export PGPASSFILE={passfile}" in out
    for host in ("127.0.0.1", str(info.stack_dir / "postgres" / "run")):  # TCP and the unix socket
        with pytest.raises(psycopg.OperationalError, match="password"):
            _connect(info.pg_port, "postgres", None, host=host)
        with _connect(info.pg_port, "postgres", str(passfile), host=host) as c:
            assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
    hba = subprocess.run(["cat", str(info.stack_dir / "postgres" / "data" / "pg_hba.conf")],
                         capture_output=True, text=True, check=True).stdout
    rules = [ln.split() for ln in hba.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert rules and all(r[-1] == "scram-sha-256" for r in rules), rules


def test_the_roles_exist_without_privileges_and_the_app_needs_its_password(fresh_stack) -> None:
    info, _ = fresh_stack
    passfile = str(info.stack_dir / "postgres" / "pgpass")
    with _connect(info.pg_port, "postgres", passfile) as c:
        roles = {r[0]: r[1:] for r in c.execute(
            """SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin
                 FROM pg_roles WHERE rolname LIKE 'meterflow%'""")}
        assert roles == {"meterflow_owner": (False, False, False, True),
                         "meterflow_app": (False, False, False, True),
                         "meterflow_analyst": (False, False, False, False)}
        assert c.execute("SELECT datdba::regrole::text FROM pg_database WHERE datname = 'billing'"
                         ).fetchone() == ("meterflow_owner",)
    with pytest.raises(psycopg.OperationalError, match="password"):
        _connect(info.pg_port, "meterflow_app", None)


def test_one_command_start_then_migrate_as_the_owner_and_run_as_the_app(fresh_stack) -> None:
    info, _ = fresh_stack
    passfile = str(info.stack_dir / "postgres" / "pgpass")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT), "PGPASSFILE": passfile,
           "METERFLOW__POSTGRES__PORT": str(info.pg_port),
           "METERFLOW__KAFKA__BOOTSTRAP_SERVERS": info.bootstrap_servers}

    def meterflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.app", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    r = meterflow("db", "migrate")
    assert r.returncode == 0 and "applied V007__least_privilege" in r.stdout, r.stdout + r.stderr
    r = meterflow("pricebook", "load", str(REPO_ROOT / "examples" / "pricebooks" / "standard-usd.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    with _connect(info.pg_port, "meterflow_app", passfile) as app:
        assert app.execute("SELECT count(*) > 0 FROM billing.price_book_versions").fetchone() == (True,)
        assert app.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'rated_charges'"
                           ).fetchone() == ("meterflow_owner",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SET session_replication_role = replica")
