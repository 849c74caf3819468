"""What every ``meterflow`` command shares: the ``--config`` option and its settings loader, the
consoles, and the conversion of expected failures (bad config, Postgres or Kafka unreachable, a
database or topic missing) into one clear line and a non-zero exit instead of a traceback.

Only ``cli/`` prints; the services it calls report through return values and callbacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from schemas.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    import psycopg

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $METERFLOW_CONFIG, "
                 "config/meterflow.toml, else the shipped example)."),
]
PeriodOpt = Annotated[str, typer.Option("--period", help="billing period, YYYY-MM (UTC month)")]

EXIT_FAILED = 1  # the command ran and failed (a check, a conflict, an unreachable server)
EXIT_USAGE = 2  # the command was given something it cannot use (config, option, file)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one red line on stderr and exit with ``code``."""
    err.print(f"[red]{message}[/]", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fail_text(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Like :func:`fail`, for messages that may contain ``[`` (no rich markup in them)."""
    err.print("[red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as e:
        fail_text(str(e), EXIT_USAGE)


def postgres_problem(e: BaseException, settings: Settings) -> str | None:
    """One line for an expected Postgres failure (None: not one of those)."""
    import psycopg

    pg = settings.postgres
    where = f"{pg.host}:{pg.port}"
    if isinstance(e, psycopg.OperationalError):
        text = str(e)
        if "does not exist" in text and "database" in text:
            return (f"database {pg.database!r} does not exist on {where}: create it with "
                    "`meterflow db create` (then `meterflow db migrate`)")
        if "password authentication failed" in text or "no password supplied" in text:
            return f"Postgres at {where} refused user {pg.user!r}: {text.strip().splitlines()[-1]}"
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        reason = first.rsplit("failed: ", 1)[-1].strip()  # "… port 1 failed: Connection refused"
        return (f"Postgres is unreachable at {where} ({reason[:200]}); "
                "is the stack up? `meterflow stack status`")
    if isinstance(e, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return (f"database {pg.database!r} has no meterflow schema yet "
                f"({str(e).strip().splitlines()[0]}): run `meterflow db migrate`")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return f"user {pg.user!r} may not do this: {str(e).strip().splitlines()[0]}"
    return None


def kafka_problem(e: BaseException, settings: Settings) -> str | None:
    """One line for an expected Kafka failure (None: not one of those)."""
    from kafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError

    from jobs.tools.topics import KafkaUnreachable, TopicMissing

    if isinstance(e, TopicMissing):
        return str(e)
    if isinstance(e, KafkaUnreachable):
        return f"{e}; is the stack up? `meterflow stack status`"
    if isinstance(e, UnknownTopicOrPartitionError):
        return (f"a topic does not exist on {settings.kafka.bootstrap_servers} ({e}): create the "
                "topics with `meterflow topics create`")
    # kafka-python 3 reports "no broker answers" as a timeout of its bootstrap (2.x: NoBrokersAvailable)
    if (isinstance(e, KafkaTimeoutError) and "bootstrap" in str(e)) or type(e).__name__ == "NoBrokersAvailable":
        return (f"Kafka is unreachable at {settings.kafka.bootstrap_servers}; is the stack up? "
                "`meterflow stack status`")
    if isinstance(e, KafkaError):
        return f"Kafka at {settings.kafka.bootstrap_servers}: {e}"
    return None


@contextmanager
def clear_errors(settings: Settings) -> Iterator[None]:
    """Turn expected Postgres/Kafka failures raised inside into one line and exit 1."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as e:  # only the expected kinds are turned into a line; the rest re-raised
        line = postgres_problem(e, settings) or kafka_problem(e, settings)
        if line is None:
            raise
        fail_text(line)


@contextmanager
def connected(settings: Settings, **kwargs: Any) -> Iterator[psycopg.Connection]:
    """A Postgres connection for a command (``sinks.db.connect``'s keywords), with
    :func:`clear_errors` around its use."""
    from sinks.db import connect

    with clear_errors(settings), connect(settings, **kwargs) as conn:
        yield conn


def preflight_database(settings: Settings) -> None:
    """For the long-running jobs: refuse to start against a database that does not exist or has
    no meterflow schema (a configuration error: waiting would not fix it). An unreachable
    Postgres is let through: the job's own outage policy ([ledger] outage_exit_after) decides."""
    import psycopg

    from sinks.db import connect

    try:
        with connect(settings, connect_timeout=10) as conn:
            conn.execute("SELECT 1 FROM billing.schema_migrations LIMIT 1")
    except psycopg.OperationalError as e:
        if "does not exist" in str(e):
            fail_text(postgres_problem(e, settings) or str(e))
    except psycopg.Error as e:
        fail_text(postgres_problem(e, settings) or str(e).strip().splitlines()[0])


def preflight_kafka(settings: Settings) -> None:
    """For the commands that need Kafka: refuse at once when no bootstrap server accepts a
    connection (the clients would wait for their bootstrap timeout, 10–30 s, to say the same)."""
    from jobs.tools.topics import KafkaUnreachable, check_reachable

    try:
        check_reachable(settings)
    except KafkaUnreachable as e:
        fail_text(kafka_problem(e, settings) or str(e))


class RichProgress:
    """A rich progress bar on stderr implementing :class:`jobs.progress.Progress`."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=err, disable=not enabled, transient=False)
        self._task: Any = None
        self._title = ""

    def start(self, title: str, total: int | None) -> None:
        self._title = title
        self._bar.start()
        self._task = self._bar.add_task(title, total=total)

    def describe(self, text: str) -> None:
        self._bar.update(self._task, description=f"{self._title}: {text}")

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)

    def update(self, completed: int) -> None:
        self._bar.update(self._task, completed=completed)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=self._title)
        self._bar.stop()
