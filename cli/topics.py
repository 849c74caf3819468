"""``meterflow topics create``: the Kafka topics of the loaded configuration (jobs/tools/topics.py).

Create them before the first ``meterflow produce``: a topic that does not exist is refused by
``produce`` (the local broker would auto-create it with its own partition count instead of
``topics.partitions``).
"""

from __future__ import annotations

import typer

from cli.options import ConfigOpt, clear_errors, console, preflight_kafka, settings_or_exit
from schemas.config import Settings

topics_app = typer.Typer(help="Kafka topics: create the configured ones.", no_args_is_help=True)


def create_topics(settings: Settings) -> None:
    """Create the missing topics with ``topics.partitions`` partitions and say what was done."""
    from jobs.tools.topics import ensure_topics, topic_specs

    preflight_kafka(settings)
    with clear_errors(settings):
        created = ensure_topics(settings)
    existing = [t for t in topic_specs(settings) if t not in created]
    if created:
        console.print(
            f"created topics {', '.join(created)} ({settings.topics.partitions} "
            f"partition(s) each) on {settings.kafka.bootstrap_servers}",
            markup=False,
            highlight=False,
        )
    if existing:
        console.print(
            f"topics {', '.join(existing)} exist already (unchanged)", markup=False, highlight=False
        )


@topics_app.command("create")
def topics_create(config: ConfigOpt = None) -> None:
    """Create the configured topics (events, dlq, late, ledger, duplicates) that are missing, with
    topics.partitions partitions each; existing topics are left as they are. Idempotent."""
    create_topics(settings_or_exit(config))
