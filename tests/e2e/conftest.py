"""End-to-end tests against a real standalone Flink cluster (``meterflow cluster up``), started
once per session on free ports in a private directory under .local/ and stopped at the end.
They also need the Kafka + Postgres stack (the ``stack`` fixture of tests/integration)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, stack  # noqa: F401  (the stack fixture)

ROOT = Path(__file__).resolve().parents[2]
_HERE = Path(__file__).resolve().parent
VENV_BIN = ROOT / ".venv" / "bin"


@dataclass(frozen=True)
class LocalCluster:
    directory: Path
    rest_port: int
    prom_ports: tuple[int, int]
    env: dict[str, str]  # METERFLOW_CLUSTER_* and a PATH on which `meterflow` is the venv's


def _free_pair() -> tuple[int, int]:
    """Two consecutive free ports (the Prometheus reporter takes a port range)."""
    import socket

    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p, p + 1
    raise RuntimeError("no two consecutive free ports")


def cluster_command(cluster: LocalCluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["meterflow", "cluster", *args], cwd=ROOT, env=cluster.env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def local_cluster(stack, request: pytest.FixtureRequest) -> LocalCluster:  # noqa: F811 - the imported fixture
    directory = ROOT / ".local" / f"e2e-cluster-{secrets.token_hex(3)}"
    prom = _free_pair()
    ports = {k: free_port() for k in ("REST", "RPC", "BLOB", "TM_RPC", "TM_DATA")}
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["METERFLOW_CLUSTER_DIR"] = str(directory)
    env["METERFLOW_CLUSTER_PROM_PORTS"] = f"{prom[0]}-{prom[1]}"
    env["METERFLOW_CLUSTER_STATE_BACKEND"] = "rocksdb"
    for k, v in ports.items():
        env[f"METERFLOW_CLUSTER_{k}_PORT"] = str(v)
    cluster = LocalCluster(directory, ports["REST"], prom, env)
    up = cluster_command(cluster, "up")
    if up.returncode != 0:
        cluster_command(cluster, "down")
        pytest.fail(f"meterflow cluster up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}", pytrace=False)
    yield cluster
    down = cluster_command(cluster, "down")
    assert down.returncode == 0, down.stderr
    if not request.session.testsfailed:  # keep the logs of a failed session
        shutil.rmtree(directory, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
