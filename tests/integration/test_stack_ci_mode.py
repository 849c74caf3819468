"""``CI=true bash scripts/test.sh`` in a checkout whose stack already runs, and ``stack.sh up`` on
a running stack with other ports: a clear refusal at once (not a 90 s wait for a port nobody
listens on), and the running stack is never stopped. Only throw-away stacks in private dirs on
free ports are started and stopped here; the shared stack is only looked at."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, run_stack

from .test_stack_script import _pids, _temp_stack_env

TEST_SH = ROOT / "scripts" / "test.sh"


@pytest.fixture(scope="module")
def running_stack():
    """A private stack, up for the module (stands for a developer's stack in this checkout)."""
    env, stack_dir = _temp_stack_env()
    try:
        up = run_stack("up", env)
        assert up.returncode == 0, f"private stack did not come up:\n{up.stdout}\n{up.stderr}"
        yield env
    finally:
        run_stack("down", env)
        shutil.rmtree(stack_dir, ignore_errors=True)


def _ci_env(base: dict[str, str]) -> dict[str, str]:
    """The caller's environment minus everything that points at a particular stack or database."""
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith(("METERFLOW_", "METERFLOW__")) and k not in ("PGPASSFILE", "PGPASSWORD")
    }
    env["CI"] = "true"
    return env


@pytest.mark.parametrize("var", ["METERFLOW_KAFKA_PORT", "METERFLOW_PG_PORT"])
def test_up_with_other_ports_on_a_running_stack_refuses_and_keeps_it(running_stack, var) -> None:
    before = _pids(run_stack("status", running_stack).stdout)
    r = run_stack("up", {**running_stack, var: str(free_port())})
    assert r.returncode == 7, r.stdout + r.stderr
    assert "already runs" in r.stderr and running_stack["METERFLOW_STACK_DIR"] in r.stderr
    after = run_stack("status", running_stack)
    assert after.returncode == 0 and _pids(after.stdout) == before


def test_ci_mode_refuses_a_running_stack_dir_it_would_stop(running_stack) -> None:
    before = _pids(run_stack("status", running_stack).stdout)
    env = _ci_env(os.environ) | {"METERFLOW_STACK_DIR": running_stack["METERFLOW_STACK_DIR"]}
    r = subprocess.run(
        ["bash", str(TEST_SH), "tests/unit/test_config.py", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "CI=true starts and stops a stack of its own" in r.stderr
    after = run_stack("status", running_stack)
    assert after.returncode == 0 and _pids(after.stdout) == before


def test_ci_mode_runs_on_a_private_stack_and_leaves_the_checkouts_stack_alone(stack) -> None:
    """The scenario of the issue when run from a checkout whose .local/stack is up (the shared
    one): CI mode starts its own stack under .local/ci-stack, runs the tests, removes it."""
    shared_before = _pids(run_stack("status", stack.env).stdout)
    r = subprocess.run(
        # test.sh runs `pytest tests "$@"`: -k picks one small Postgres test of the suite
        ["bash", str(TEST_SH), "-q", "-p", "no:cacheprovider", "-k",
         "test_applying_the_migrations_twice_is_a_no_op"],
        cwd=ROOT,
        env=_ci_env(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "1 passed" in r.stdout, r.stdout[-2000:]
    m = re.search(r"^\[test\] CI: stack in (\S+) on", r.stdout, flags=re.M)
    assert m, r.stdout[-2000:]
    private = Path(m.group(1))
    assert private.parent == ROOT / ".local" / "ci-stack"
    assert not private.exists(), "the private CI stack was not removed"
    assert _pids(run_stack("status", stack.env).stdout) == shared_before
