"""A private PostgreSQL server for fault tests that stop and restart it (the shared stack's
Postgres must never be stopped): initdb into a temporary directory, pg_ctl start/stop, on a free
port. Run as user postgres when the tests run as root (Postgres refuses to run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from schemas.config import Settings
from sinks.db import connect
from sinks.migrate import migrate
from tests.conftest import free_port


def _pg_bin() -> Path | None:
    if os.environ.get("METERFLOW_PG_BIN"):
        return Path(os.environ["METERFLOW_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if found:
        return Path(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PrivatePostgres:
    def __init__(self, root: Path, port: int, bin_dir: Path) -> None:
        self.root, self.port, self.bin = root, port, bin_dir
        self.data = root / "data"

    def _as_pg(self, *cmd: str) -> subprocess.CompletedProcess:
        argv = [str(c) for c in cmd]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, cwd="/", capture_output=True, text=True, timeout=120, check=False)

    def init(self) -> None:
        r = self._as_pg(self.bin / "initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8",
                        "--locale=C.UTF-8", "--auth=trust")
        assert r.returncode == 0, r.stderr
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.root}'\nfsync = off\nshared_buffers = 32MB\n")

    def start(self) -> None:
        r = self._as_pg(self.bin / "pg_ctl", "start", "-D", self.data, "-l", self.root / "pg.log", "-w",
                        "-t", "60")
        assert r.returncode == 0, (r.stdout, r.stderr, (self.root / "pg.log").read_text()[-2000:])

    def stop(self) -> None:
        r = self._as_pg(self.bin / "pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w", "-t", "60")
        assert r.returncode == 0, (r.stdout, r.stderr)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="mf-pg-", dir="/tmp"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = PrivatePostgres(root, free_port(), bin_dir)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        pg._as_pg(bin_dir / "pg_ctl", "stop", "-D", pg.data, "-m", "immediate", "-w")
        shutil.rmtree(root, ignore_errors=True)


def database_on(pg: PrivatePostgres, base: Settings, name: str = "billing") -> Settings:
    """A migrated database ``name`` on the private server; ``base``'s Kafka and topics."""
    with psycopg.connect(f"host=127.0.0.1 port={pg.port} dbname=postgres user=postgres",
                         autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    s = base.model_copy(update={"postgres": base.postgres.model_copy(
        update={"host": "127.0.0.1", "port": pg.port, "database": name, "user": "postgres"})})
    with connect(s) as conn:
        migrate(conn)
    return s
