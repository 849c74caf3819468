"""One place that builds Flink environments for meterflow's jobs from the typed settings.

Pitfalls handled here (see docs/ARCHITECTURE.md): Python workers get ``python.executable`` = this
interpreter; thread mode needs the venv's site-packages on PYTHONPATH; checkpoint settings are
configuration keys; the connector jars come from ``flink.jars_dir`` (scripts/fetch_jars.sh).
"""

from __future__ import annotations

import os
import site
import sys
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


def _ms(td) -> str:  # noqa: ANN001
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


def flink_configuration(
    settings: Settings, *, job_name: str, parallelism: int | None = None, checkpointing: bool = True
) -> Configuration:
    f = settings.flink
    _python_path_for_thread_mode()  # before the first pyflink object starts the JVM gateway
    conf = Configuration()
    conf.set_string("pipeline.name", job_name)
    conf.set_string("parallelism.default", str(parallelism or f.parallelism))
    conf.set_string("pipeline.jars", ";".join(connector_jars(settings)))
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("python.execution-mode", f.python_execution_mode)
    # Large bundles: fewer JVM<->Python round trips (a bundle also ends at every checkpoint and
    # at most bundle.time after its first element)
    conf.set_string("python.fn-execution.bundle.size", "50000")
    conf.set_string("python.fn-execution.bundle.time", "1000")
    # Chained operators hand records over without a defensive copy (Flink SQL's operators are
    # written for reuse; the jobs have no Java user functions that keep references)
    conf.set_string("pipeline.object-reuse", "true")
    conf.set_string("rest.port", "0")  # the embedded mini-cluster must not collide with others
    conf.set_string("table.local-time-zone", "UTC")
    conf.set_string("pipeline.auto-watermark-interval", _ms(settings.time.watermark_interval))
    if checkpointing:
        conf.set_string("execution.checkpointing.interval", _ms(f.checkpoint_interval))
        conf.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
        cdir = f.checkpoint_dir  # a local path, or a URI such as s3://bucket/checkpoints
        conf.set_string("execution.checkpointing.dir", cdir if "://" in cdir else Path(cdir).resolve().as_uri())
        conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
        conf.set_string("state.backend.type", "hashmap")
    for k, v in f.config.items():
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
    path: Path | None = Path(restore)
    if restore != "latest" and "://" not in restore and not (path / "_metadata").is_file() and not (
            path.is_file() and path.name == "_metadata"):
        raise FileNotFoundError(f"{restore} is not a checkpoint or savepoint (no _metadata there)")
    if restore == "latest":
        path = latest_checkpoint(settings.flink.checkpoint_dir)
        if path is None:
            raise FileNotFoundError(f"no completed checkpoint under {settings.flink.checkpoint_dir}")
    config = {**settings.flink.config, "execution.state-recovery.path": Path(path).resolve().as_uri()}
    return settings.model_copy(update={"flink": settings.flink.model_copy(update={"config": config})})


def table_environment(
    settings: Settings, *, job_name: str, parallelism: int | None = None, checkpointing: bool = True
) -> StreamTableEnvironment:
    conf = flink_configuration(settings, job_name=job_name, parallelism=parallelism, checkpointing=checkpointing)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env_settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
    return StreamTableEnvironment.create(env, environment_settings=env_settings)
