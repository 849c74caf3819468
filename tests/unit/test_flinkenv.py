"""jobs/flink/env.py: which configuration keys the job sets, embedded and under ``flink run``.

Precedence under ``flink run``: command line (-D, -p, -s, -d) > the cluster's configuration >
meterflow's config file > meterflow's defaults. Anything the job puts into its own configuration
beats the first two, so it may only fill keys they leave unset (and add its jars). ``CONTEXT`` is
what `flink run -d -p 2 -Dfoo.bar=1 -py probe.py` handed a probe job on the local cluster of
scripts/cluster.sh (printed from the environment's configuration; env.* and ports trimmed).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from jobs.flink import env as flinkenv
from jobs.flink.env import EMBEDDED_ONLY, is_detached, job_configuration, submitted_by_flink_run
from schemas.config import REPO_ROOT, load_settings

FLINK_PYTHON = "file:/venv/lib/python3.11/site-packages/pyflink/opt/flink-python-2.2.1.jar"
CONTEXT = {
    "execution.attached": "false",
    "execution.target": "remote",
    "execution.checkpointing.dir": "file:///cluster/checkpoints",
    "execution.checkpointing.savepoint-dir": "file:///cluster/savepoints",
    "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
    "execution.state-recovery.claim-mode": "NO_CLAIM",
    "foo.bar": "1",
    "parallelism.default": "2",
    "pipeline.jars": f"['{FLINK_PYTHON}']",
    "python.client.executable": "/venv/bin/python",
    "python.executable": "/venv/bin/python",
    "rest.address": "localhost",
    "rest.port": "28081",
    "state.backend.type": "rocksdb",
    "taskmanager.numberOfTaskSlots": "2",
}


@pytest.fixture()
def settings(tmp_path: Path):
    """The shipped example's settings with a jars dir of empty stand-in connector jars."""
    for name in flinkenv.JAR_NAMES:
        (tmp_path / f"{name}-1.0.jar").write_bytes(b"")
    s = load_settings(REPO_ROOT / "config" / "meterflow.example.toml")
    flink = s.flink.model_copy(update={"jars_dir": str(tmp_path), "parallelism": 3,
                                       "checkpoint_interval": timedelta(seconds=7),
                                       "config": {"pipeline.max-parallelism": "64"}})
    return s.model_copy(update={"flink": flink})


def jar_list(value: str) -> list[str]:
    return value.split(";")


# --- embedded -----------------------------------------------------------------------------------


def test_embedded_the_job_sets_everything_from_its_settings(settings) -> None:
    conf = job_configuration(settings, job_name="j")
    assert conf["rest.port"] == "0"  # many mini-clusters on one machine
    assert conf["parallelism.default"] == "3"
    assert conf["state.backend.type"] == "hashmap"
    assert conf["execution.checkpointing.interval"] == "7000 ms"
    assert conf["pipeline.name"] == "j"
    assert conf["pipeline.max-parallelism"] == "64"  # flink.config
    assert [Path(j).name for j in jar_list(conf["pipeline.jars"])] == sorted(
        f"{n}-1.0.jar" for n in flinkenv.JAR_NAMES)


def test_embedded_an_explicit_parallelism_beats_the_settings(settings) -> None:
    assert job_configuration(settings, job_name="j", parallelism=2)["parallelism.default"] == "2"


def test_the_config_files_flink_table_beats_the_defaults_embedded(settings) -> None:
    s = settings.model_copy(update={"flink": settings.flink.model_copy(update={
        "config": {"state.backend.type": "rocksdb", "rest.port": "8089"}})})
    conf = job_configuration(s, job_name="j")
    assert conf["state.backend.type"] == "rocksdb" and conf["rest.port"] == "8089"


# --- under flink run ----------------------------------------------------------------------------


def test_under_flink_run_nothing_the_command_line_or_cluster_set_is_overridden(settings) -> None:
    conf = job_configuration(settings, job_name="j", context=CONTEXT)
    overridden = {k for k in conf if k in CONTEXT and k != "pipeline.jars"}
    assert not overridden, f"the job would override -D/-p/the cluster's config: {sorted(overridden)}"
    for key in EMBEDDED_ONLY:  # REST port and state backend: never the job's business on a cluster
        assert key not in conf


def test_under_flink_run_the_connector_jars_are_added_to_the_clis(settings) -> None:
    conf = job_configuration(settings, job_name="j", context=CONTEXT)
    jars = jar_list(conf["pipeline.jars"])
    assert jars[0] == FLINK_PYTHON  # the CLI's flink-python jar stays
    assert [Path(j).name for j in jars[1:]] == sorted(f"{n}-1.0.jar" for n in flinkenv.JAR_NAMES)


def test_under_flink_run_a_jars_list_in_semicolon_form_is_kept_once(settings) -> None:
    ours = flinkenv.connector_jars(settings)
    ctx = {**CONTEXT, "pipeline.jars": f"file:/x/a.jar;{ours[0]}"}
    jars = jar_list(job_configuration(settings, job_name="j", context=ctx)["pipeline.jars"])
    assert jars == ["file:/x/a.jar", *ours]


def test_under_flink_run_meterflow_fills_only_what_is_unset(settings) -> None:
    bare = {"execution.target": "remote", "execution.attached": "true"}
    conf = job_configuration(settings, job_name="meterflow-metering", context=bare)
    # below the cluster, meterflow's config file and defaults still apply
    assert conf["pipeline.name"] == "meterflow-metering"
    assert conf["parallelism.default"] == "3"
    assert conf["execution.checkpointing.interval"] == "7000 ms"
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert conf["pipeline.max-parallelism"] == "64"
    assert "rest.port" not in conf and "state.backend.type" not in conf
    # -Dpipeline.name=… and a cluster-level checkpoint interval win
    ctx = {**bare, "pipeline.name": "mine", "execution.checkpointing.interval": "1 min"}
    conf = job_configuration(settings, job_name="meterflow-metering", context=ctx)
    assert "pipeline.name" not in conf and "execution.checkpointing.interval" not in conf


def test_under_flink_run_a_restore_path_given_with_s_beats_the_settings(settings, tmp_path) -> None:
    (tmp_path / "_metadata").write_bytes(b"")  # what with_restore requires of a checkpoint
    restored = flinkenv.with_restore(settings, str(tmp_path))
    ctx = {**CONTEXT, "execution.state-recovery.path": "file:///cluster/savepoints/sp-1"}
    assert "execution.state-recovery.path" not in job_configuration(restored, job_name="j", context=ctx)
    assert "execution.state-recovery.path" in job_configuration(restored, job_name="j", context=CONTEXT)


def test_the_mode_comes_from_the_gateway_flink_run_hands_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYFLINK_GATEWAY_PORT", raising=False)
    assert not submitted_by_flink_run()
    monkeypatch.setenv("PYFLINK_GATEWAY_PORT", "40000")
    assert submitted_by_flink_run()


def test_detached_is_read_from_execution_attached() -> None:
    assert is_detached({"execution.attached": "false"})
    assert not is_detached({"execution.attached": "true"})
    assert not is_detached({})


# --- main(): -d detaches, attached waits --------------------------------------------------------


class _Result:
    def __init__(self) -> None:
        self.waited = 0

    def wait(self) -> None:
        self.waited += 1


@pytest.mark.parametrize(("attached", "waits"), [("false", 0), ("true", 1)])
def test_main_waits_only_when_attached(monkeypatch: pytest.MonkeyPatch, attached: str, waits: int) -> None:
    from jobs.flink import metering

    result = _Result()
    monkeypatch.setenv("PYFLINK_GATEWAY_PORT", "40000")
    monkeypatch.setattr(flinkenv, "context_configuration", lambda: {"execution.attached": attached})
    monkeypatch.setattr(metering, "build_job", lambda settings, bounded: (None, None, None))
    monkeypatch.setattr(metering, "submit", lambda *a: result)
    assert metering.main([]) == 0
    assert result.waited == waits
