"""meterflow settings: one typed object, from a TOML file with environment overrides.

Precedence (highest first): explicit keyword arguments, environment variables
``METERFLOW__<SECTION>__<KEY>`` (e.g. ``METERFLOW__TIME__ALLOWED_LATENESS=2h``), the TOML file
(``--config F``, or ``$METERFLOW_CONFIG``, or ``config/meterflow.toml`` when present, else the
shipped example), then the defaults below. Secrets (the Postgres passwords, Kafka credentials)
come only from the environment (``METERFLOW__POSTGRES__PASSWORD``, ``PGPASSWORD``, a libpq
``PGPASSFILE``), never from the file: any key that looks like a secret (it contains
``password``, ``secret``, ``jaas`` or ``token``, in any case, at any depth, including
``kafka.properties`` and ``flink.config``) makes the file an error.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from schemas.event import METER_PATTERN, METER_RE

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO_ROOT / "config" / "meterflow.example.toml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "meterflow.toml"
ENV_PREFIX = "METERFLOW__"

_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """Durations are written ``500ms``, ``5s``, ``10m``, ``1h``, ``7d`` (or a timedelta)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("must be a duration string such as '5s', '10m', '1h' or '7d'")
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration: use a whole number and ms|s|m|h|d, e.g. '5s'")
    n, unit = int(m.group(1)), m.group(2)
    if unit == "ms":
        return timedelta(milliseconds=n)
    return timedelta(seconds=n * _UNIT[unit])


def format_duration(td: timedelta) -> str:
    ms = int(td / timedelta(milliseconds=1))
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


class Aggregation(StrEnum):
    SUM = "sum"
    COUNT = "count"
    MAX = "max"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    consumer_group: str = "meterflow-metering"
    # Extra client properties passed to the Flink Kafka connector / kafka-python (no secrets).
    properties: dict[str, str] = Field(default_factory=dict)
    # Producer properties of the metering job's Kafka sinks only. Large batches and a short linger
    # halve the broker's CPU per record (docs/PERFORMANCE.md, session 4); the outputs are
    # exactly-once, visible at the checkpoint's commit anyway, so the linger adds no latency a
    # reader can see.
    sink_properties: dict[str, str] = Field(
        default_factory=lambda: {"linger.ms": "50", "batch.size": "1048576"})


class TopicSettings(_Section):
    events: str = "usage-events"
    dlq: str = "usage-events-dlq"
    late: str = "usage-events-late"
    # internal: the metering job's committed outputs for the ledger writer
    ledger: str = "meterflow-ledger"
    duplicates: str = "meterflow-duplicates"  # internal: duplicate counts per event id (upsert)
    alerts: str = "billing-alerts"  # alerts (docs/ALERTS.md), keyed by customer_id, dedup by alert_id
    partitions: int = Field(4, ge=1, le=1024)


class PostgresSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(15432, ge=1, le=65535)
    database: str = "billing"
    # Every meterflow command connects as this role: it owns nothing and may only read, append
    # and change the rows that are mutable by design (sinks/migrations/V007__least_privilege.sql).
    user: str = "meterflow_app"
    # `meterflow db migrate` connects as this role, the owner of schema billing.
    migration_user: str = "meterflow_owner"
    schema_name: str = Field("billing", alias="schema")
    # Only from the environment; see module docstring.
    password: SecretStr | None = None
    migration_password: SecretStr | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def conninfo(self, *, migration: bool = False) -> str:
        """libpq conninfo for the app role, or the owner role (``migration``). Without a password
        here, libpq looks in ``PGPASSWORD`` and the password file (``PGPASSFILE``)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.database,
            "user": self.migration_user if migration else self.user,
        }
        secret = self.migration_password if migration else self.password
        pw = secret.get_secret_value() if secret else os.environ.get("PGPASSWORD")
        if pw:
            parts["password"] = pw
        return " ".join(f"{k}={_quote_conninfo(v)}" for k, v in parts.items())

    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{self.host}:{self.port}/{self.database}"


def _quote_conninfo(v: str) -> str:
    if v and not re.search(r"[\s'\\]", v):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


class TimeSettings(_Section):
    """Event-time semantics (DESIGN.md section 3). Durations as strings: '5s', '1h'."""

    window_size: timedelta = timedelta(hours=1)
    max_out_of_orderness: timedelta = timedelta(seconds=5)
    idleness_timeout: timedelta = timedelta(seconds=30)
    allowed_lateness: timedelta = timedelta(hours=1)
    max_future_skew: timedelta = timedelta(minutes=5)
    # Dedup keeps event ids at least this long; must be >= allowed_lateness.
    dedup_horizon: timedelta = timedelta(days=2)
    watermark_interval: timedelta = timedelta(milliseconds=200)
    # periodic: every watermark_interval (cheap); on-event: after every event (deterministic
    # classification for a given arrival order, used by the differential tests)
    watermark_emit: str = Field("periodic", pattern="^(periodic|on-event)$")

    @field_validator(
        "window_size", "max_out_of_orderness", "idleness_timeout", "allowed_lateness",
        "max_future_skew", "dedup_horizon", "watermark_interval", mode="before",
    )
    @classmethod
    def _durations(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @field_validator("window_size")
    @classmethod
    def _window_divides_day(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be positive")
        if timedelta(days=1) % v != timedelta(0):
            raise ValueError("must divide 24 hours exactly (e.g. 1m, 15m, 1h, 6h, 1d)")
        if v % timedelta(seconds=1) != timedelta(0):
            raise ValueError("must be a whole number of seconds")
        return v

    @field_validator(
        "max_out_of_orderness", "allowed_lateness", "max_future_skew", "idleness_timeout"
    )
    @classmethod
    def _non_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError("must not be negative")
        return v

    @field_validator("watermark_interval")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be positive")
        return v

    @model_validator(mode="after")
    def _dedup_covers_lateness(self) -> Self:
        if self.dedup_horizon < self.allowed_lateness:
            raise ValueError(
                "time.dedup_horizon must be at least time.allowed_lateness "
                f"({format_duration(self.dedup_horizon)} < {format_duration(self.allowed_lateness)})"
            )
        return self


class FlinkSettings(_Section):
    parallelism: int = Field(1, ge=1, le=1024)
    checkpoint_interval: timedelta = timedelta(seconds=10)
    checkpoint_dir: str = str(REPO_ROOT / ".local" / "checkpoints")
    python_execution_mode: str = Field("thread", pattern="^(thread|process)$")
    jars_dir: str = str(REPO_ROOT / ".local" / "jars")
    # Extra Flink configuration keys passed through verbatim.
    config: dict[str, str] = Field(default_factory=dict)

    @field_validator("checkpoint_interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return positive_duration(v)


def positive_duration(v: Any) -> timedelta:
    td = parse_duration(v)
    if td <= timedelta(0):
        raise ValueError("must be positive")
    return td


class MeterSettings(_Section):
    name: str
    aggregation: Aggregation = Aggregation.SUM
    unit: str | None = None
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not METER_RE.fullmatch(v):
            raise ValueError(f"{v!r} must match {METER_PATTERN}")
        return v


class DunningStep(_Section):
    """One step of the dunning policy: ``name`` sent ``days`` after an unpaid invoice's due date."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    days: int = Field(ge=1, le=3650)


def _default_dunning() -> list[DunningStep]:
    return [DunningStep(name="reminder", days=3), DunningStep(name="second_reminder", days=14),
            DunningStep(name="final_notice", days=30)]


class SellerSettings(_Section):
    """The seller block printed on invoices, credit notes and reminders."""

    name: str = "meterflow demo seller"
    address: list[str] = Field(default_factory=lambda: ["1 Example Street", "Springfield"])
    tax_id: str | None = None
    email: str | None = None


class BillingSettings(_Section):
    period: str = Field("month", pattern="^month$")
    # Tolerance of reconcile when comparing rounded line sums, in minor units per line.
    reconcile_tolerance_minor_units: int = Field(0, ge=0)
    # Net days for customers without their own terms (customers file: payment_terms_days);
    # the due date is fixed at issue. 30 is also what invoices issued before V010 got.
    payment_terms_days: int = Field(30, ge=0, le=3650)
    # Overdue follow-up: each step once per invoice, `days` after the due date (`[[billing.dunning]]`)
    dunning: list[DunningStep] = Field(default_factory=_default_dunning)
    seller: SellerSettings = SellerSettings()

    @field_validator("dunning")
    @classmethod
    def _dunning_order(cls, v: list[DunningStep]) -> list[DunningStep]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError("dunning step names must be unique")
        days = [s.days for s in v]
        if days != sorted(set(days)):
            raise ValueError("dunning steps must have increasing days")
        return v


class LedgerSettings(_Section):
    """The ledger writers (``meterflow run ledger``; docs/OPERATIONS.md, "Ledger writers")."""

    # Kafka consumer group of the ledger writers: every `meterflow run ledger` of one deployment
    # joins it and owns a disjoint set of partitions (offsets stay in Postgres, not in the group).
    # "" = meterflow-ledger.<postgres.database>.<topics.ledger>: one group per ledger and database
    group_id: str = ""
    # records per Postgres transaction. The writer's work per (window, batch) — the durable
    # dedup's window_progress, provisional spend — makes small batches dear under a backlog: at
    # 1M events / 10k keys, 20,000 cost 467 CPU µs/event end to end, 100,000 293 (PERFORMANCE.md,
    # session 7). A streaming writer that keeps up applies what it polls, far fewer than this.
    max_batch: int = Field(100_000, ge=1, le=1_000_000)
    # Postgres unreachable this long: the writer exits non-zero (a supervisor restarts it; it
    # resumes at the offsets Postgres holds) instead of idling
    outage_exit_after: timedelta = timedelta(minutes=5)
    retry_backoff_max: timedelta = timedelta(seconds=30)  # reconnect attempts back off up to this
    # JSON status (state, outage, counters) rewritten as it changes; "" = .local/ledger-status/
    status_file: str = ""

    @field_validator("outage_exit_after", "retry_backoff_max", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return positive_duration(v)


class Settings(BaseSettings):
    """The whole meterflow configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    postgres: PostgresSettings = PostgresSettings()
    time: TimeSettings = TimeSettings()
    flink: FlinkSettings = FlinkSettings()
    billing: BillingSettings = BillingSettings()
    ledger: LedgerSettings = LedgerSettings()
    meters: list[MeterSettings] = Field(
        default_factory=lambda: [MeterSettings(name="api_calls")], min_length=1
    )

    @field_validator("meters")
    @classmethod
    def _unique_meters(cls, v: list[MeterSettings]) -> list[MeterSettings]:
        seen: set[str] = set()
        for m in v:
            if m.name in seen:
                raise ValueError(f"meter {m.name!r} is declared twice")
            seen.add(m.name)
        return v

    def meter(self, name: str) -> MeterSettings | None:
        return next((m for m in self.meters if m.name == name), None)

    @property
    def meter_aggregations(self) -> dict[str, Aggregation]:
        return {m.name: m.aggregation for m in self.meters}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry the TOML file's content (see load_settings); env overrides it.
        return (env_settings, init_settings)


class ConfigError(ValueError):
    """A configuration value broke a rule; the message names the key and the rule."""


# A key containing any of these (case-insensitive) names a secret: `password` also covers
# `ssl.key.password` and `sasl.password`, `secret` covers `s3.secret-key`, `jaas` covers
# `sasl.jaas.config` (which carries a password inline), `token` covers OAuth/API tokens.
SECRET_KEY_PARTS = ("password", "secret", "jaas", "token")


def _reject_secrets(data: Any, path: str = "", source: Path | str = "the config file") -> None:
    """Refuse a config file with a secret-looking key anywhere (tables, inline tables such as
    ``kafka.properties`` and ``flink.config``, arrays of tables such as ``meters``)."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            _reject_secrets(item, f"{path}[{i}]", source)
        return
    if not isinstance(data, dict):
        return
    for k, v in data.items():
        key = f"{path}.{k}" if path else str(k)
        if any(part in str(k).lower() for part in SECRET_KEY_PARTS):
            where = path.split(".", 2)
            hint = ("" if not path or "[" in path
                    else f"METERFLOW__{where[0].upper()}__{str(k).upper()}" if len(where) == 1
                    else f"METERFLOW__{where[0].upper()}__{where[1].upper()} as a JSON object")
            raise ConfigError(
                f"{key}: secrets are not allowed in {source} (this key names one); "
                f"give it through the environment instead{' (' + hint + ')' if hint else ''}"
            )
        _reject_secrets(v, key, source)


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    if path:
        return Path(path)
    if os.environ.get("METERFLOW_CONFIG"):
        return Path(os.environ["METERFLOW_CONFIG"])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else EXAMPLE_CONFIG


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the TOML file, apply environment overrides, validate; raise ConfigError on a bad value."""
    cfg_path = resolve_config_path(path)
    try:
        data = tomllib.loads(cfg_path.read_text(encoding="utf-8"), parse_float=Decimal)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {cfg_path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {cfg_path} is not valid TOML: {e}") from e
    _reject_secrets(data, source=cfg_path)
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, cfg_path)) from e


def format_validation_error(e: ValidationError, source: Path | str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
