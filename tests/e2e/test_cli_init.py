"""A newcomer's first commands: ``meterflow db create``, ``topics create``, ``init``, and
``produce`` refusing a topic that does not exist (instead of the broker auto-creating it with its
own partition count)."""

from __future__ import annotations

import pytest
from kafka.admin import KafkaAdminClient

from jobs.tools.topics import topic_specs
from sinks.db import OWNER_ROLE, connect
from tests.e2e.cli_util import (
    assert_one_clear_line,
    database_exists,
    delete_topics,
    drop_database,
    env_for,
    existing_topics,
    mf,
    private_names,
)


@pytest.fixture()
def fresh():
    """Settings naming a database and topics (2 partitions) that do not exist; removed after."""
    s = private_names(partitions=2)
    try:
        yield s
    finally:
        drop_database(s)
        delete_topics(s)


def partitions(settings, topic: str) -> int:
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, client_id="nc-test"
    )
    try:
        return len(admin.describe_topics([topic])[0]["partitions"])
    finally:
        admin.close()


def test_db_create_then_migrate_then_topics_create(fresh) -> None:
    env = env_for(fresh)
    r = mf(env, "db", "create")
    assert r.returncode == 0, r.stderr
    assert f"created database {fresh.postgres.database} owned by {OWNER_ROLE}" in r.stdout
    again = mf(env, "db", "create")
    assert again.returncode == 0 and "exists" in again.stdout, again.stderr

    r = mf(env, "db", "migrate")
    assert r.returncode == 0 and "applied V001__core" in r.stdout, r.stderr
    with connect(fresh) as conn:  # as meterflow_app, like every command
        assert conn.execute("SELECT count(*) FROM billing.schema_migrations").fetchone()[0] >= 7

    r = mf(env, "topics", "create")
    assert r.returncode == 0, r.stderr
    assert set(topic_specs(fresh)) <= existing_topics(fresh)
    assert {partitions(fresh, t) for t in topic_specs(fresh)} == {2}  # topics.partitions, not 4
    again = mf(env, "topics", "create")
    assert again.returncode == 0 and "exist already" in again.stdout, again.stderr


def test_init_does_everything_once_and_is_idempotent(fresh) -> None:
    env = env_for(fresh)
    r = mf(env, "init")
    assert r.returncode == 0, r.stderr
    assert database_exists(fresh, fresh.postgres.database)
    assert set(topic_specs(fresh)) <= existing_topics(fresh)
    again = mf(env, "init")
    assert again.returncode == 0, again.stderr
    assert "schema billing is up to date" in again.stdout


def test_produce_refuses_a_missing_topic_naming_the_command_that_creates_it(fresh) -> None:
    env = env_for(fresh)
    r = mf(env, "produce", "--count", "10")
    assert_one_clear_line(r, fresh.topics.events, "does not exist", "meterflow topics create")
    assert fresh.topics.events not in existing_topics(fresh)  # not auto-created by a send

    assert mf(env, "topics", "create").returncode == 0
    ok = mf(env, "produce", "--count", "10")
    assert ok.returncode == 0, ok.stderr
    assert partitions(fresh, fresh.topics.events) == 2


def test_produce_to_a_missing_override_topic_is_refused_too(fresh) -> None:
    env = env_for(fresh)
    assert mf(env, "topics", "create").returncode == 0
    other = f"{fresh.topics.events}-typo"
    assert_one_clear_line(
        mf(env, "produce", "--count", "1", "--topic", other), other, "meterflow topics create"
    )
    assert other not in existing_topics(fresh)
