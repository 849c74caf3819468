"""Pipeline tests run Flink's embedded mini-cluster on bounded input (no Kafka, no Postgres)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/pipeline/" in str(item.fspath):
            item.add_marker(pytest.mark.pipeline)
