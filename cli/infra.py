"""``meterflow stack`` and ``meterflow cluster``: the local Kafka + PostgreSQL stack and the local
standalone Flink cluster (thin wrappers of scripts/stack.sh and scripts/cluster.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer

from cli.options import ConfigOpt, settings_or_exit
from schemas.config import REPO_ROOT, Settings

stack_app = typer.Typer(help="The local Kafka + PostgreSQL stack (scripts/stack.sh).", no_args_is_help=True)


def _stack_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    env.setdefault("METERFLOW_KAFKA_PORT", port)
    env.setdefault("METERFLOW_PG_PORT", str(settings.postgres.port))
    env.setdefault("METERFLOW_TOPIC_PARTITIONS", str(settings.topics.partitions))
    env.setdefault("METERFLOW_TOPIC_EVENTS", settings.topics.events)
    env.setdefault("METERFLOW_TOPIC_DLQ", settings.topics.dlq)
    env.setdefault("METERFLOW_TOPIC_LATE", settings.topics.late)
    return env


def _run_stack(action: str, config: Path | None) -> None:
    settings = settings_or_exit(config)
    script = REPO_ROOT / "scripts" / "stack.sh"
    rc = subprocess.call(["bash", str(script), action], env=_stack_env(settings))
    raise typer.Exit(rc)


@stack_app.command("up")
def stack_up(config: ConfigOpt = None) -> None:
    """Start Kafka (KRaft) and PostgreSQL on loopback, create the topics; idempotent."""
    _run_stack("up", config)


@stack_app.command("down")
def stack_down(config: ConfigOpt = None) -> None:
    """Stop the processes this stack started (by their recorded PIDs)."""
    _run_stack("down", config)


@stack_app.command("status")
def stack_status(config: ConfigOpt = None) -> None:
    """One line per server; exit code 1 when any is stopped."""
    _run_stack("status", config)


cluster_app = typer.Typer(
    help="A local standalone Flink cluster from the apache-flink wheel (scripts/cluster.sh): "
         "conf, logs, pids under .local/cluster.", no_args_is_help=True)


def _run_cluster(*args: str) -> None:
    rc = subprocess.call(["bash", str(REPO_ROOT / "scripts" / "cluster.sh"), *args])
    raise typer.Exit(rc)


@cluster_app.command("up")
def cluster_up() -> None:
    """Start a JobManager and a TaskManager (2 slots); idempotent. Ports: METERFLOW_CLUSTER_*."""
    _run_cluster("up")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop the JobManager and TaskManager (by their recorded pids)."""
    _run_cluster("down")


@cluster_app.command("status")
def cluster_status() -> None:
    """One line per process and the REST address; exit code 3 when something is stopped."""
    _run_cluster("status")


@cluster_app.command(
    "flink", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def cluster_flink(ctx: typer.Context) -> None:
    """Flink's CLI against the local cluster, e.g. `meterflow cluster flink run -py jobs/flink/metering.py
    -pyfs jobs,operators,pricing,schemas,sinks`; `flink stop`, `flink list` …"""
    _run_cluster("flink", *ctx.args)
