"""The gateway's one typed settings object, read from ``GATEWAY_*`` environment variables.

Built once in ``main`` and validated before anything connects. Domain code receives explicit
values from it, never the object itself. Secrets (database password, MQTT password) are kept in
``SecretStr`` and only ever shown redacted.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import ConfigError

__all__ = ["LogFormat", "Settings", "TimescaleMode", "load_settings", "redact_url"]


class TimescaleMode(enum.StrEnum):
    AUTO = "auto"
    """Use TimescaleDB when the extension is available, plain PostgreSQL otherwise."""
    ON = "on"
    """Require TimescaleDB; fail at migration if it is missing."""
    OFF = "off"
    """Never use TimescaleDB, even when available."""


class LogFormat(enum.StrEnum):
    JSON = "json"
    TEXT = "text"


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password (user-info or ``?password=``) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    return _QUERY_PASSWORD.sub(r"\1***", url)


class Settings(BaseSettings):
    """Gateway configuration. Every field is the variable ``GATEWAY_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", case_sensitive=False, extra="ignore", frozen=True
    )

    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/gateway")
    """libpq URL of the gateway database."""
    db_pool_min: int = Field(2, ge=1, le=100)
    db_pool_max: int = Field(8, ge=1, le=200)
    timescaledb: TimescaleMode = TimescaleMode.AUTO

    mqtt_url: SecretStr = SecretStr("mqtt://127.0.0.1:1883")
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://`` for TLS."""
    mqtt_client_id: str = Field("meter-gateway", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    mqtt_topic_prefix: str = Field("", pattern=r"^([A-Za-z0-9_.-]+/)*$")
    mqtt_shared_group: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,64}$")
    """When set, subscribe through ``$share/<group>/…`` so several gateways split the load."""
    mqtt_session_expiry_s: int = Field(7 * 86400, ge=0, le=0xFFFFFFFF)
    mqtt_receive_maximum: int = Field(20_000, ge=1, le=65535)
    """Un-acknowledged QoS 1 messages the broker may have in flight to us. Acknowledging after
    commit caps the message rate at about this many per flush cycle, and bounds the raw
    payloads held in memory; the broker's own limit (Mosquitto ``max_inflight_messages``)
    applies too, whichever is lower."""

    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    """0 picks a free port (printed at start)."""

    batch_max_rows: int = Field(20_000, ge=1, le=1_000_000)
    batch_max_age_ms: int = Field(100, ge=1, le=60_000)
    ingest_max_pending_rows: int = Field(400_000, ge=1000)
    """Readings parsed but not yet committed; above this, intake pauses until a flush."""

    modbus_enabled: bool = False
    """Poll meters registered with transport ``modbus``. Enable it on one gateway only: many
    meters accept a single TCP master."""
    modbus_refresh_s: float = Field(30.0, ge=1, le=3600)
    """How often the list of Modbus meters is re-read from the registry."""
    modbus_concurrency: int = Field(64, ge=1, le=1024)
    """Endpoints (host:port) with a request in flight at once."""
    modbus_request_timeout_ms: int = Field(2000, ge=10, le=60_000)
    modbus_connect_timeout_ms: int = Field(3000, ge=10, le=60_000)
    modbus_pacing_ms: int = Field(0, ge=0, le=10_000)
    """Pause between requests on one connection (devices that need it)."""
    modbus_interval_s: float | None = Field(None, gt=0, le=86_400)
    """Poll every meter this often instead of its registered reporting interval."""
    modbus_backoff_max_s: float = Field(300.0, ge=1, le=86_400)
    modbus_verified_only: bool = False
    """Poll only meters an operator has verified."""

    shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    """On stop, how long to keep trying to commit pending data before leaving it to the
    broker (un-acknowledged messages are redelivered at the next start)."""

    detection_enabled: bool = True
    """Run the leak / faulty-meter detection loop (docs/detection.md)."""
    detection_poll_ms: int = Field(1000, ge=10, le=60_000)
    """Pause of the detection loop when its queue is empty."""
    detection_batch: int = Field(5000, ge=1, le=1_000_000)
    """Queue entries (changed meter ranges) taken per detection round."""
    detection_worker: bool = True
    """Judge meters in a worker process at lower CPU priority, off the ingest event loop."""
    detection_rules: dict[str, float] = Field(default_factory=dict)
    """Rule thresholds overriding the defaults, as a JSON object (docs/detection.md)."""

    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    log_format: LogFormat = LogFormat.JSON

    data_dir: Path = Path(".data")
    """Where ``gateway demo`` keeps embedded PostgreSQL/broker data and fleet output."""

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return value

    @field_validator("detection_rules")
    @classmethod
    def _check_rules(cls, value: dict[str, float]) -> dict[str, float]:
        from gateway.detection.model import Rules  # noqa: PLC0415 - keeps settings light

        try:
            Rules.from_overrides(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check_pool(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("GATEWAY_DB_POOL_MIN must not exceed GATEWAY_DB_POOL_MAX")
        if self.ingest_max_pending_rows < self.batch_max_rows:
            raise ValueError("GATEWAY_INGEST_MAX_PENDING_ROWS must be ≥ GATEWAY_BATCH_MAX_ROWS")
        return self

    @property
    def mqtt_host(self) -> str:
        return urlsplit(self.mqtt_url.get_secret_value()).hostname or "127.0.0.1"

    @property
    def mqtt_port(self) -> int:
        parts = urlsplit(self.mqtt_url.get_secret_value())
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def mqtt_tls(self) -> bool:
        return urlsplit(self.mqtt_url.get_secret_value()).scheme == "mqtts"

    @property
    def mqtt_credentials(self) -> tuple[str, str | None] | None:
        parts = urlsplit(self.mqtt_url.get_secret_value())
        return (parts.username, parts.password) if parts.username else None

    def describe(self) -> dict[str, object]:
        """Settings for a start-up log line, secrets redacted."""
        shown = self.model_dump(exclude={"database_url", "mqtt_url"})
        shown["database_url"] = redact_url(self.database_url.get_secret_value())
        shown["mqtt_url"] = redact_url(self.mqtt_url.get_secret_value())
        shown["data_dir"] = str(self.data_dir)
        return shown


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; ConfigError with every problem listed."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "GATEWAY_" + "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"{name or 'settings'}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
