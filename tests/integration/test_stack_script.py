"""scripts/stack.sh behaves: idempotent `up`, honest `status`, clear errors on a taken port.

Tests that stop servers use a second, throw-away stack (own directory, own free ports), never
the shared one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_port, run_stack, stack_info


def _pids(status_output: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+): running pid=(\d+)", status_output, flags=re.M))


def _temp_stack_env(**extra: str) -> tuple[dict[str, str], Path]:
    # Not pytest's tmp_path: its parent is mode 700 and the `postgres` user must reach the dir.
    stack_dir = Path(tempfile.mkdtemp(prefix="meterflow-stack-"))
    stack_dir.chmod(0o755)
    env = dict(os.environ)
    env.update(
        METERFLOW_STACK_DIR=str(stack_dir),
        METERFLOW_KAFKA_PORT=str(free_port()),
        METERFLOW_KAFKA_CONTROLLER_PORT=str(free_port()),
        METERFLOW_PG_PORT=str(free_port()),
        METERFLOW_TOPIC_PARTITIONS="1",
    )
    env.update(extra)
    return env, stack_dir


@pytest.fixture(scope="module")
def second_stack():
    """A second stack in a temp dir on free ports, started once for this module, then removed."""
    env, stack_dir = _temp_stack_env()
    try:
        up = run_stack("up", env)
        assert up.returncode == 0, f"second stack did not come up:\n{up.stdout}\n{up.stderr}"
        yield stack_info(env)
    finally:
        run_stack("down", env)
        shutil.rmtree(stack_dir, ignore_errors=True)


def test_stack_up_twice_is_harmless_and_keeps_the_same_servers(stack):
    before = run_stack("status", stack.env)
    assert before.returncode == 0, before.stdout + before.stderr

    again = run_stack("up", stack.env, timeout=60)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stderr
    after = run_stack("status", stack.env)
    assert after.returncode == 0
    assert _pids(after.stdout) == _pids(before.stdout)
    assert set(_pids(after.stdout)) == {"kafka", "postgres"}


def test_status_names_postgres_as_stopped_when_only_postgres_is_down(second_stack):
    running = run_stack("status", second_stack.env)
    assert running.returncode == 0, running.stdout + running.stderr

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    pg_ctl = str(debian[-1]) if debian else shutil.which("pg_ctl")
    cmd = [pg_ctl, "stop", "-D", str(second_stack.stack_dir / "postgres" / "data"), "-m", "fast"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, cwd="/", timeout=60)

    status = run_stack("status", second_stack.env)

    assert status.returncode != 0
    assert re.search(r"^postgres: stopped", status.stdout, flags=re.M), status.stdout
    assert re.search(r"^kafka: running pid=\d+", status.stdout, flags=re.M), status.stdout


def test_stack_down_stops_every_server_of_that_stack_only(second_stack, stack):
    pids = _pids(run_stack("status", second_stack.env).stdout)
    shared_before = _pids(run_stack("status", stack.env).stdout)

    down = run_stack("down", second_stack.env)

    assert down.returncode == 0, down.stdout + down.stderr
    status = run_stack("status", second_stack.env)
    assert status.returncode != 0
    assert re.search(r"^kafka: stopped", status.stdout, flags=re.M), status.stdout
    assert re.search(r"^postgres: stopped", status.stdout, flags=re.M), status.stdout
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} still alive after down"
    assert _pids(run_stack("status", stack.env).stdout) == shared_before


@pytest.mark.parametrize("port_var", ["METERFLOW_PG_PORT", "METERFLOW_KAFKA_PORT"])
def test_a_port_already_taken_gives_a_clear_error_and_starts_nothing(port_var):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        env, stack_dir = _temp_stack_env(**{port_var: str(taken)})
        try:
            up = run_stack("up", env, timeout=60)

            assert up.returncode == 4, up.stdout + up.stderr
            assert f"port {taken}" in up.stderr
            assert "already taken" in up.stderr
            assert port_var in up.stderr
            status = run_stack("status", env)
            assert "running" not in status.stdout
        finally:
            run_stack("down", env)
            shutil.rmtree(stack_dir, ignore_errors=True)
