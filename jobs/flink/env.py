"""One place that builds Flink environments for meterflow's jobs from the typed settings.

Two modes, told apart by :func:`submitted_by_flink_run`:

* **embedded** (``meterflow run …``, the tests): the job owns its mini-cluster and sets everything
  from meterflow's settings — parallelism, checkpoints, a hashmap state backend and ``rest.port=0``
  (many mini-clusters on one machine must not collide on 8081);
* **submitted** (``flink run -py jobs/flink/metering.py``): precedence is command line (``-D``, ``-p``,
  ``-s``, ``-d``) > the cluster's configuration (the conf dir ``flink run`` reads) > meterflow's
  config file > meterflow's defaults. Anything a job sets in its own configuration silently beats
  the first two, so the job sets only what it must — its name; its connector jars *added to*
  whatever ``pipeline.jars`` already holds (``-j``, ``-Dpipeline.jars``, the flink-python jar the
  CLI adds) — and every other meterflow setting (Python, checkpoints, parallelism, ``flink.config``)
  only where the command line and cluster configuration leave the key unset. REST address/port and
  the state backend are never set.

Pitfalls handled here (see docs/ARCHITECTURE.md): Python workers get ``python.executable`` = this
interpreter; thread mode needs the venv's site-packages on PYTHONPATH; checkpoint settings are
configuration keys; the connector jars come from ``flink.jars_dir`` (scripts/fetch_jars.sh).
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Mapping
from pathlib import Path

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import EnvironmentSettings, StreamTableEnvironment

from schemas.config import REPO_ROOT, Settings

JAR_NAMES = (
    "flink-sql-connector-kafka",
    "flink-connector-jdbc-core",
    "flink-connector-jdbc-postgres",
    "postgresql",
)
# Keys the job sets even under `flink run` (pipeline.jars is merged, not replaced).
_ALWAYS = ("pipeline.jars",)
# Keys only an embedded mini-cluster gets: on a cluster they are the cluster's business.
EMBEDDED_ONLY = ("rest.port", "state.backend.type")


def _ms(td) -> str:
    return f"{int(td.total_seconds() * 1000)} ms"


def connector_jars(settings: Settings) -> list[str]:
    folder = Path(settings.flink.jars_dir)
    jars = sorted(folder.glob("*.jar")) if folder.is_dir() else []
    missing = [n for n in JAR_NAMES if not any(j.name.startswith(n + "-") for j in jars)]
    if missing:
        raise FileNotFoundError(
            f"connector jars missing in {folder}: {', '.join(missing)} — run scripts/fetch_jars.sh"
        )
    return [j.resolve().as_uri() for j in jars]


def submitted_by_flink_run() -> bool:
    """True when this Python process runs under ``flink run -py``: the CLI's PythonDriver starts
    it with the port of the CLI's own JVM gateway in ``PYFLINK_GATEWAY_PORT`` — the same test
    pyflink.java_gateway.get_gateway makes to connect instead of launching a local JVM. (The
    environment it then hands out carries the CLI's configuration: ``execution.target`` remote,
    ``execution.attached``, ``-D`` and ``-p`` values; tests/e2e checks it on a real cluster.)"""
    return "PYFLINK_GATEWAY_PORT" in os.environ


def context_configuration() -> dict[str, str]:
    """The configuration the execution context already holds: under ``flink run`` the cluster's
    conf dir plus the command line; embedded, the local defaults."""
    from pyflink.util.java_utils import get_j_env_configuration

    env = StreamExecutionEnvironment.get_execution_environment()
    return {str(k): str(v) for k, v in
            dict(get_j_env_configuration(env._j_stream_execution_environment).toMap()).items()}


def is_detached(context: Mapping[str, str]) -> bool:
    """``flink run -d`` sets ``execution.attached: false``: main() must then return at once."""
    return str(context.get("execution.attached", "true")).strip().lower() == "false"


def _merge_jars(existing: str | None, ours: list[str]) -> str:
    """``existing`` (Flink's list syntax: ``a;b`` or ``['a', 'b']``) followed by ``ours``, once each."""
    old = Configuration.parse_list_value(existing) if existing and existing.strip() else []
    return ";".join(dict.fromkeys([j.strip() for j in old if j.strip()] + ours))


def job_configuration(
    settings: Settings,
    *,
    job_name: str,
    parallelism: int | None = None,
    checkpointing: bool = True,
    context: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The keys the job sets. ``context`` None: embedded (everything from the settings); else
    the configuration ``flink run`` handed over, whose keys win over all of meterflow's (see the
    module docstring)."""
    f = settings.flink
    wanted: dict[str, str] = {"pipeline.name": job_name}
    wanted["parallelism.default"] = str(parallelism or f.parallelism)
    wanted["python.executable"] = sys.executable
    wanted["python.client.executable"] = sys.executable
    wanted["python.execution-mode"] = f.python_execution_mode
    # Large bundles: fewer JVM<->Python round trips (a bundle also ends at every checkpoint and
    # at most bundle.time after its first element)
    wanted["python.fn-execution.bundle.size"] = "50000"
    wanted["python.fn-execution.bundle.time"] = "1000"
    # Chained operators hand records over without a defensive copy (Flink SQL's operators are
    # written for reuse; the jobs have no Java user functions that keep references)
    wanted["pipeline.object-reuse"] = "true"
    wanted["table.local-time-zone"] = "UTC"
    wanted["pipeline.auto-watermark-interval"] = _ms(settings.time.watermark_interval)
    if checkpointing:
        wanted["execution.checkpointing.interval"] = _ms(f.checkpoint_interval)
        wanted["execution.checkpointing.mode"] = "EXACTLY_ONCE"
        cdir = f.checkpoint_dir  # a local path, or a URI such as s3://bucket/checkpoints
        wanted["execution.checkpointing.dir"] = cdir if "://" in cdir else Path(cdir).resolve().as_uri()
        wanted["execution.checkpointing.externalized-checkpoint-retention"] = "RETAIN_ON_CANCELLATION"
    if context is None:
        wanted["rest.port"] = "0"  # the embedded mini-cluster must not collide with others
        if checkpointing:
            wanted["state.backend.type"] = "hashmap"
        wanted["pipeline.jars"] = ";".join(connector_jars(settings))
        wanted.update(f.config)
        return wanted
    wanted.update(f.config)  # meterflow's config file: above its defaults, below the cluster's
    out = {k: v for k, v in wanted.items()
           if k not in context and k not in EMBEDDED_ONLY and k not in _ALWAYS}
    out["pipeline.jars"] = _merge_jars(context.get("pipeline.jars"), connector_jars(settings))
    return out


def flink_configuration(
    settings: Settings, *, job_name: str, parallelism: int | None = None, checkpointing: bool = True,
    context: Mapping[str, str] | None = None,
) -> Configuration:
    _python_path_for_thread_mode()  # before the first pyflink object starts the JVM gateway
    conf = Configuration()
    for k, v in job_configuration(settings, job_name=job_name, parallelism=parallelism,
                                  checkpointing=checkpointing, context=context).items():
        conf.set_string(k, v)
    return conf


def _python_path_for_thread_mode() -> None:
    """Thread mode runs Python inside the JVM process: it must find this venv's packages."""
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()] + [str(REPO_ROOT)]
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + current))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` folder with ``_metadata``) under the
    checkpoint dir of any job, or None."""
    best: tuple[float, Path] | None = None
    for meta in Path(checkpoint_dir).glob("*/chk-*/_metadata"):
        key = (meta.stat().st_mtime, meta.parent)
        if best is None or key[0] > best[0]:
            best = key
    return best[1] if best else None


def with_restore(settings: Settings, restore: str | None) -> Settings:
    """Settings that restore the job from ``restore``: a checkpoint/savepoint path, or
    ``latest`` for the newest retained checkpoint under flink.checkpoint_dir."""
    if not restore:
        return settings
    if restore == "latest":
        latest = latest_checkpoint(settings.flink.checkpoint_dir)
        if latest is None:
            raise FileNotFoundError(f"no completed checkpoint under {settings.flink.checkpoint_dir}")
        path = latest
    else:
        path = Path(restore)
        if "://" not in restore and not (path / "_metadata").is_file() and not (
                path.is_file() and path.name == "_metadata"):
            raise FileNotFoundError(f"{restore} is not a checkpoint or savepoint (no _metadata there)")
    config = {**settings.flink.config, "execution.state-recovery.path": path.resolve().as_uri()}
    return settings.model_copy(update={"flink": settings.flink.model_copy(update={"config": config})})


def table_environment(
    settings: Settings, *, job_name: str, parallelism: int | None = None, checkpointing: bool = True
) -> StreamTableEnvironment:
    """A streaming table environment; under ``flink run`` it keeps the command line's and the
    cluster's settings (:func:`job_configuration`)."""
    context = context_configuration() if submitted_by_flink_run() else None
    conf = flink_configuration(settings, job_name=job_name, parallelism=parallelism,
                               checkpointing=checkpointing, context=context)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env_settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
    return StreamTableEnvironment.create(env, environment_settings=env_settings)
