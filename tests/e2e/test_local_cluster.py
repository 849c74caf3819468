"""The README's cluster commands, verbatim, on a real standalone Flink cluster (issue 12).

One scenario, as an operator runs it (the lines are read from README.md's "Running on a real
Flink cluster" section and run with bash from the repository root; only ``<job-id>`` and
``<savepoint>`` are filled in):

1. ``meterflow run ledger`` in the background, then the detached ``meterflow cluster flink run -d
   …``: the command returns while the job is RUNNING in the cluster's REST API (not a
   mini-cluster), at the cluster's parallelism, with the cluster's RocksDB state backend;
   Prometheus (the cluster's reporter) shows the meterflow counters and the watermark lag;
2. ``meterflow cluster flink stop <job-id>`` (stop with a savepoint: the job is FINISHED); more
   events arrive while it is stopped;
3. the attached ``meterflow cluster flink run -p 2 -s <savepoint> …``: a second job on the same
   TaskManager (with flink-python only on pipeline.jars it would crash-loop in pemja), at
   parallelism 2, restored from the savepoint, no restart;
4. Postgres equals ``meterflow run metering --bounded`` (embedded) on the same input: the same
   accepted events, final windows, charges per (customer, meter, period), duplicate count —
   nothing lost or doubled across the stop;
5. stopping the attached job ends its client with exit code 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.flink.run import run_metering
from jobs.tools.produce import send
from jobs.tools.synthetic import SyntheticSpec, generate
from schemas.config import Settings
from tests.conftest import ROOT, LocalCluster, cluster_command
from tests.e2e.test_metering_restart import SENTINEL, env_for, sentinels, snapshot
from tests.integration.metering_util import load_prices, private_metering_settings

README = ROOT / "README.md"
CUSTOMERS = [f"cust-{i:05d}" for i in range(10)]
METERS = ("api_calls", "storage_gb_hours")
T0 = datetime(2026, 11, 3, tzinfo=UTC)
# Both batches on time (disorder within the watermark's bound): the embedded bounded run and the
# stopped-and-resumed cluster run classify every event alike, so the comparison is exact.
BATCH_1 = SyntheticSpec(count=6000, seed=21, customers=len(CUSTOMERS), meters=METERS, start=T0,
                        span=timedelta(hours=3), out_of_order_share=0.05, max_disorder=timedelta(seconds=2),
                        duplicate_share=0.02, invalid_share=0.02)
BATCH_2 = SyntheticSpec(count=3000, seed=22, customers=len(CUSTOMERS), meters=METERS,
                        start=T0 + timedelta(hours=3), span=timedelta(hours=2), out_of_order_share=0.05,
                        max_disorder=timedelta(seconds=2), duplicate_share=0.02, invalid_share=0.0)
TIME = dict(window_size="1h", allowed_lateness="1h", max_out_of_orderness="5s", idleness_timeout="30s")


def readme_commands() -> list[str]:
    """The command lines of the README's cluster section (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Running on a real Flink cluster", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        lines += [ln.split(" # ", 1)[0].strip() for ln in block.splitlines() if ln.strip()]
    return lines


def readme_line(start: str) -> str:
    found = [ln for ln in readme_commands() if ln.startswith(start)]
    assert len(found) == 1, f"README's cluster section must have one line starting {start!r}: {found}"
    return found[0]


def rest(cluster: LocalCluster, path: str, method: str = "GET") -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{cluster.rest_port}{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def wait_for(what: str, probe, timeout: float = 240, every: float = 2):
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` (and its last value)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def prometheus(cluster: LocalCluster) -> list[tuple[str, dict[str, str], float]]:
    """Every sample the cluster's Prometheus reporters (JobManager and TaskManager) expose."""
    out = []
    for port in cluster.prom_ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
            if m:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
                out.append((m.group(1), labels, float(m.group(3))))
    return out


def job_samples(cluster: LocalCluster, job_id: str, suffix: str) -> list[tuple[dict[str, str], float]]:
    return [(lb, v) for name, lb, v in prometheus(cluster)
            if lb.get("job_id") == job_id and name.endswith(suffix)]


def shell(line: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def env_of(settings: Settings, cluster: LocalCluster) -> dict[str, str]:
    env = env_for(settings)
    env.update({k: v for k, v in cluster.env.items() if k.startswith("METERFLOW_CLUSTER_") or k == "PATH"})
    return env


def running(cluster: LocalCluster, job_id: str) -> dict | None:
    job = rest(cluster, f"/jobs/{job_id}")
    ok = job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"])
    return job if ok else None


def test_the_readme_cluster_commands_stop_resume_at_parallelism_2_and_equal_the_embedded_run(
    local_cluster: LocalCluster, tmp_path: Path,
) -> None:
    cluster = local_cluster
    submit_line = readme_line("meterflow cluster flink run -d ")
    stop_line = readme_line("meterflow cluster flink stop ")
    resume_line = readme_line("meterflow cluster flink run -p 2 -s ")
    ledger_line = readme_line("meterflow run ledger")
    assert "<job-id>" in stop_line and "<savepoint>" in resume_line
    # what the session fixture runs around the scenario
    assert readme_line("meterflow cluster up") == "meterflow cluster up"
    assert readme_line("meterflow cluster down") == "meterflow cluster down"
    batch_1, batch_2 = list(generate(BATCH_1)), list(generate(BATCH_2))
    kinds_1 = Counter(r.kind for r in batch_1)

    with private_metering_settings(**TIME) as embedded, private_metering_settings(**TIME) as cl:
        load_prices(embedded, CUSTOMERS)
        load_prices(cl, CUSTOMERS)
        send(embedded, batch_1 + batch_2, progress=False)
        sentinels(embedded)
        run_metering(embedded, bounded=True)
        expected = snapshot(embedded, exclude=SENTINEL)
        assert expected["events"][1] == kinds_1["valid"] + Counter(r.kind for r in batch_2)["valid"]

        env = env_of(cl, cluster)
        send(cl, batch_1, progress=False)
        ledger_log = (tmp_path / "ledger.log").open("wb")
        ledger = subprocess.Popen(["bash", "-c", ledger_line], cwd=ROOT, env=env, stdout=ledger_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        resumed: subprocess.Popen | None = None
        jobs: list[str] = []
        try:
            # 1. detached submit: the command returns, the job runs on the cluster
            r = shell(submit_line, env)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            first = re.search(r"JobID ([0-9a-f]{32})", r.stdout).group(1)
            jobs.append(first)
            job = wait_for("the job RUNNING", lambda: running(cluster, first))
            assert job["name"] == "meterflow-metering"
            assert {v["parallelism"] for v in job["vertices"]} == {1}  # the cluster's parallelism.default
            cp = rest(cluster, f"/jobs/{first}/checkpoints/config")
            assert cp["state_backend"] == "EmbeddedRocksDBStateBackend", cp  # the cluster's, not the job's
            assert cp["mode"] == "exactly_once"

            # the cluster's Prometheus reporter: meterflow's counters and the watermark lag
            def counters_done() -> bool:
                rejected = sum(v for _, v in job_samples(cluster, first, "_meterflow_reason_events_rejected"))
                accepted = sum(v for lb, v in job_samples(cluster, first, "_operator_numRecordsIn")
                               if lb.get("operator_name", "").startswith("Deduplicate"))
                return rejected == kinds_1["invalid"] and accepted == kinds_1["valid"] + kinds_1["duplicate"]

            wait_for("Prometheus counters covering batch 1", counters_done)
            reasons = {lb.get("reason") for lb, _ in job_samples(cluster, first, "_meterflow_reason_events_rejected")}
            assert "invalid_json" in reasons, reasons
            for suffix in ("_meterflow_events_late_within", "_meterflow_events_late_beyond", "_watermarkLag"):
                assert job_samples(cluster, first, suffix), f"no {suffix} series for the job in Prometheus"

            # 2. stop with a savepoint; events arrive while the job is stopped
            r = shell(stop_line.replace("<job-id>", first), env)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            savepoint = re.search(r"Savepoint completed\. Path: (\S+)", r.stdout).group(1)
            assert Path(savepoint.removeprefix("file:")).is_relative_to(cluster.directory / "savepoints")
            wait_for("the first job FINISHED", lambda: rest(cluster, f"/jobs/{first}")["state"] == "FINISHED")
            send(cl, batch_2, progress=False)
            sentinels(cl)

            # 3. resume attached at parallelism 2: a second job on the same TaskManager
            resume_log = tmp_path / "resume.log"
            resumed = subprocess.Popen(["bash", "-c", resume_line.replace("<savepoint>", savepoint)], cwd=ROOT,
                                       env=env, stdout=resume_log.open("wb"), stderr=subprocess.STDOUT,
                                       start_new_session=True)

            def second_job() -> str | None:
                assert resumed.poll() is None, resume_log.read_text()[-3000:]
                ids = [j["jid"] for j in rest(cluster, "/jobs/overview")["jobs"] if j["jid"] != first]
                return ids[0] if ids and running(cluster, ids[0]) else None

            second = wait_for("the resumed job RUNNING", second_job)
            jobs.append(second)
            job = rest(cluster, f"/jobs/{second}")
            assert {v["parallelism"] for v in job["vertices"]} == {2}
            restored = rest(cluster, f"/jobs/{second}/checkpoints")["latest"]["restored"]
            assert restored["is_savepoint"] and restored["external_path"] == savepoint

            # 4. Postgres equals the embedded bounded run: nothing lost or doubled
            wait_for("Postgres to equal the embedded run",
                     lambda: snapshot(cl, exclude=SENTINEL) == expected, timeout=300, every=3)
            restarts = wait_for("the job's numRestarts in Prometheus",
                                lambda: job_samples(cluster, second, "_job_numRestarts"))
            assert [v for _, v in restarts] == [0.0], restarts  # no pemja crash loop

            # 5. a clean stop ends the attached client with exit code 0
            r = shell(stop_line.replace("<job-id>", second), env)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            assert resumed.wait(timeout=120) == 0, resume_log.read_text()[-3000:]
            assert rest(cluster, f"/jobs/{second}")["state"] == "FINISHED"
        finally:
            for jid in jobs:
                if rest(cluster, f"/jobs/{jid}")["state"] not in ("FINISHED", "CANCELED", "FAILED"):
                    rest(cluster, f"/jobs/{jid}?mode=cancel", method="PATCH")
            if resumed is not None and resumed.poll() is None:
                os.killpg(resumed.pid, signal.SIGKILL)
                resumed.wait(timeout=60)
            os.killpg(ledger.pid, signal.SIGKILL)
            ledger.wait(timeout=60)
            ledger_log.close()


def test_cluster_status_names_the_processes_and_the_rest_address(local_cluster: LocalCluster) -> None:
    r = cluster_command(local_cluster, "status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["jobmanager: running", "taskmanager: running",
                                     f"rest: http://127.0.0.1:{local_cluster.rest_port}"]


def test_cluster_up_rejects_a_bad_setting_with_one_line_and_creates_nothing(tmp_path: Path) -> None:
    env = dict(os.environ, METERFLOW_CLUSTER_DIR=str(tmp_path / "c"), METERFLOW_CLUSTER_SLOTS="two")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "cluster.sh"), "up"], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["cluster: METERFLOW_CLUSTER_SLOTS must be a number, got 'two'"]
    assert not (tmp_path / "c").exists()
