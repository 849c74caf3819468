"""Configuration: the TOML file, environment overrides, and errors that name key and rule."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from schemas.config import EXAMPLE_CONFIG, ConfigError, load_settings, parse_duration


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.upper().startswith("METERFLOW__") or k == "METERFLOW_CONFIG":
            monkeypatch.delenv(k)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_the_shipped_example_config_is_valid_and_declares_meters() -> None:
    s = load_settings(EXAMPLE_CONFIG)
    assert s.time.window_size == timedelta(hours=1)
    assert s.meter_aggregations["api_calls"] == "sum"
    assert s.meter_aggregations["seats"] == "max"


def test_an_environment_variable_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERFLOW__TIME__ALLOWED_LATENESS", "3h")
    monkeypatch.setenv("METERFLOW__FLINK__PARALLELISM", "2")
    s = load_settings(EXAMPLE_CONFIG)
    assert s.time.allowed_lateness == timedelta(hours=3)
    assert s.flink.parallelism == 2
    assert s.time.window_size == timedelta(hours=1)  # untouched keys keep the file's value


def test_the_postgres_password_comes_from_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("METERFLOW__POSTGRES__PASSWORD", "s3cret")
    s = load_settings(EXAMPLE_CONFIG)
    assert "password=s3cret" in s.postgres.conninfo()
    assert "s3cret" not in repr(s)  # a SecretStr never prints
    bad = write(tmp_path, '[postgres]\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match=r"postgres\.password: secrets are not allowed"):
        load_settings(bad)


BAD_VALUES = [
    # (toml, the key and the rule the message must name)
    ('[time]\nwindow_size = "7h"', r"time\.window_size: must divide 24 hours"),  # 24 % 7 != 0
    ('[time]\nwindow_size = "0s"', r"time\.window_size: must be positive"),
    ('[time]\nwindow_size = "1500ms"', r"time\.window_size: must divide 24 hours|whole number"),
    ('[time]\nallowed_lateness = "soon"', r"time\.allowed_lateness: 'soon' is not a duration"),
    ('[time]\nallowed_lateness = 5', r"time\.allowed_lateness: must be a duration string"),  # unitless
    ('[time]\nallowed_lateness = "3d"\ndedup_horizon = "1d"', r"dedup_horizon must be at least"),
    ('[flink]\nparallelism = 0', r"flink\.parallelism: Input should be greater than or equal to 1"),
    ('[flink]\npython_execution_mode = "fast"', r"flink\.python_execution_mode"),
    ('[topics]\npartitions = 0', r"topics\.partitions"),
    ('[postgres]\nport = 70000', r"postgres\.port"),
    ('[[meters]]\nname = "API"', r"meters\.0\.name: 'API' must match"),
    ('[[meters]]\nname = "a"\n[[meters]]\nname = "a"', r"meters: meter 'a' is declared twice"),
    ('[[meters]]\nname = "a"\naggregation = "avg"', r"meters\.0\.aggregation"),
    ("meters = []", r"meters: List should have at least 1 item"),
    ('[time]\nwindow_sise = "1h"', r"time\.window_sise: Extra inputs are not permitted"),  # typo
    ("[time\n", r"is not valid TOML"),
]


@pytest.mark.parametrize(("toml", "message"), BAD_VALUES)
def test_a_bad_value_fails_with_a_message_naming_the_key_and_the_rule(
    tmp_path: Path, toml: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, toml))


def test_a_bad_environment_override_is_reported_like_a_file_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERFLOW__TIME__WINDOW_SIZE", "5h")
    with pytest.raises(ConfigError, match=r"time\.window_size: must divide 24 hours"):
        load_settings(EXAMPLE_CONFIG)


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("5s", timedelta(seconds=5)),
        ("10m", timedelta(minutes=10)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        (" 2h ", timedelta(hours=2)),  # surrounding space is tolerated
    ],
)
def test_durations_are_whole_numbers_with_a_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(("toml", "key"), [
    ('[kafka]\nproperties = { "sasl.jaas.config" = "x required password=\'p\';" }',
     "kafka.properties.sasl.jaas.config"),
    ('[kafka.properties]\n"ssl.key.password" = "p"', r"kafka.properties.ssl.key.password"),
    ('[kafka.properties]\n"SASL.Password" = "p"', r"kafka.properties.SASL.Password"),
    ('[kafka]\nsink_properties = { "sasl.oauthbearer.token.endpoint.url" = "u" }',
     "kafka.sink_properties.sasl.oauthbearer.token.endpoint.url"),
    ('[flink.config]\n"s3.secret-key" = "k"', "flink.config.s3.secret-key"),
    ('[flink]\nconfig = { "fs.s3a.Secret.Key" = "k" }', "flink.config.fs.s3a.Secret.Key"),
    ('[postgres]\nPassword = "p"', "postgres.Password"),
    ('[postgres]\nmigration_password = "p"', "postgres.migration_password"),
    ('[[meters]]\nname = "a"\napi_token = "t"', r"meters\[0\].api_token"),
    ('api_secret = "s"', "api_secret"),
])
def test_a_secret_looking_key_anywhere_in_the_file_is_refused_naming_it(
    tmp_path: Path, toml: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]') if '[' not in key else key}: "
                                          r"secrets are not allowed in .*c\.toml") as e:
        load_settings(write(tmp_path, toml))
    assert "\n" not in str(e.value)


def test_ordinary_kafka_and_flink_keys_are_not_mistaken_for_secrets(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[kafka.properties]\n"security.protocol" = "SSL"\n'
                                      '"ssl.keystore.location" = "/k.jks"\n"key.deserializer" = "x"\n'
                                      '[flink.config]\n"state.backend.type" = "rocksdb"\n'))
    assert s.kafka.properties["security.protocol"] == "SSL"


def test_secrets_for_kafka_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERFLOW__KAFKA__PROPERTIES", '{"sasl.jaas.config": "x required;"}')
    assert load_settings(EXAMPLE_CONFIG).kafka.properties == {"sasl.jaas.config": "x required;"}


def test_every_command_runs_as_the_app_role_and_migrations_as_the_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERFLOW__POSTGRES__PASSWORD", "app-pw")
    monkeypatch.setenv("METERFLOW__POSTGRES__MIGRATION_PASSWORD", "owner-pw")
    pg = load_settings(EXAMPLE_CONFIG).postgres
    assert "user=meterflow_app" in pg.conninfo() and "password=app-pw" in pg.conninfo()
    assert "user=meterflow_owner" in pg.conninfo(migration=True)
    assert "password=owner-pw" in pg.conninfo(migration=True)
