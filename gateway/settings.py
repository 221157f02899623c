"""The gateway's one typed settings object, read from ``GATEWAY_*`` environment variables.

Built once in ``main`` and validated before anything connects. Domain code receives explicit
values from it, never the object itself. Secrets (database password, MQTT password) are kept in
``SecretStr`` and only ever shown redacted.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from decimal import Decimal
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_DEPLOYMENT_TIME_ZONE",
    "PARTS",
    "IpNetwork",
    "LogFormat",
    "Settings",
    "TimescaleMode",
    "check_time_zone",
    "is_loopback_host",
    "load_settings",
    "parse_networks",
    "redact_url",
]

DEFAULT_DEPLOYMENT_TIME_ZONE: Final = "Africa/Johannesburg"
PARTS: Final = ("ingest", "http", "detection", "control")
"""The parts of the service a process can run (``GATEWAY_PARTS``)."""
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")


def check_time_zone(name: str) -> str:
    """``name`` if it is an IANA time zone name known here; ValueError otherwise."""
    if not _ZONE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an IANA time zone name such as Africa/Johannesburg")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


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


_PRIVATE_NETWORKS = (
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7"
)
"""Loopback, RFC 1918, carrier-grade NAT and unique-local IPv6: where a utility's meters live."""

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    """``"10.0.0.0/8, 192.168.1.7"`` → networks; ValueError naming a bad entry."""
    networks = []
    for item in text.split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not a network: {item.strip()[:60]!r}") from None
    return tuple(networks)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    deployment_time_zone: str = DEFAULT_DEPLOYMENT_TIME_ZONE
    """IANA zone of the deployment: daily aggregates bucket days from its local midnight
    (hourly ones are UTC hours). Fixed when the schema is created; see README."""

    mqtt_url: SecretStr = SecretStr("mqtt://127.0.0.1:1883")
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://`` for TLS; user and password are
    percent-decoded (``%40`` for ``@``, ``%3A`` for ``:``, ``%25`` for ``%``)."""
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
    http_max_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30)
    """Largest request body the HTTP API reads; a larger one is answered 413."""
    http_db_wait_ms: int = Field(1000, ge=10, le=60_000)
    """How long an HTTP request waits for a database connection before it is answered 503
    with ``Retry-After`` (the ingest path has its own, longer patience)."""
    tls_cert_file: Path | None = None
    """PEM certificate (chain) to serve HTTPS with; needs ``GATEWAY_TLS_KEY_FILE``."""
    tls_key_file: Path | None = None
    behind_tls_proxy: bool = False
    """A TLS-terminating proxy is in front: allows a non-loopback listen address without TLS
    here, marks session cookies Secure and takes the client address from X-Forwarded-For of
    ``GATEWAY_TRUSTED_PROXIES``."""
    trusted_proxies: str = Field("127.0.0.1", max_length=1000)
    """Comma-separated addresses whose X-Forwarded-* headers are believed."""
    metrics_open: bool = True
    """Serve ``/metrics`` without credentials; ``false`` requires a technician (or higher)."""

    master_key_file: Path | None = None
    """File holding the key store's master key(s): 64 hex digits per line, current first."""
    provisioning_dir: Path | None = None
    """Where a newly registered meter's provisioning file (its command key) is written."""

    session_idle_s: int = Field(1800, ge=60, le=7 * 86400)
    """A login session ends after this long without a request …"""
    session_max_s: int = Field(12 * 3600, ge=60, le=30 * 86400)
    """… and this long after the login, whatever happens."""
    login_max_failures: int = Field(5, ge=1, le=100)
    """Consecutive failed logins that lock an account …"""
    login_lockout_s: int = Field(900, ge=1, le=86400)
    """… for this long."""
    rate_limit_vendor_per_min: float = Field(120.0, ge=0)
    """Requests per minute per vendor client (0: unlimited)."""
    rate_limit_staff_per_min: float = Field(1200.0, ge=0)
    """Requests per minute per technician, operator or administrator (0: unlimited)."""
    rate_limit_burst: int = Field(30, ge=1, le=100_000)
    """Requests a principal may send at once after a quiet spell."""

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
    modbus_allowed_networks: str = Field(_PRIVATE_NETWORKS, max_length=4000)
    """Comma-separated networks the poller may connect to (and the registry accepts)."""

    parts: str = Field(",".join(PARTS), pattern=r"^[a-z]+(,[a-z]+)*$")
    """Which parts this process runs, comma-separated: ``ingest`` (MQTT intake, pipeline, Modbus
    poller), ``http`` (the API, vending included, and keypad delivery), ``detection`` and
    ``control`` (the notifier). Several processes with different parts share one database; each
    needs its own ``GATEWAY_MQTT_CLIENT_ID``."""

    shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    """On stop, how long to keep trying to commit pending data before leaving it to the
    broker (un-acknowledged messages are redelivered at the next start)."""

    detection_enabled: bool = True
    """Run the leak / faulty-meter detection loop (docs/detection.md)."""
    detection_poll_ms: int = Field(1000, ge=10, le=60_000)
    """Pause of the detection loop when its queue is empty."""
    detection_sweep_ms: int = Field(60_000, ge=100, le=3_600_000)
    """How often meters that were reporting live are checked for silence (comms loss opens at
    the first check after the meter has been silent past the comms threshold)."""
    detection_batch: int = Field(5000, ge=1, le=1_000_000)
    """Queue entries (changed meter ranges) taken per detection round."""
    detection_worker: bool = True
    """Judge meters in a worker process at lower CPU priority, off the ingest event loop."""
    detection_rules: dict[str, float] = Field(default_factory=dict)
    """Rule thresholds overriding the defaults, as a JSON object (docs/detection.md)."""

    command_poll_ms: int = Field(500, ge=10, le=60_000)
    """How often the command loop looks for commands to send, replies and meter states."""
    notify_enabled: bool = True
    """Run the notifier that delivers the notification outbox (alerts and credit-control
    notices); enable on one gateway, or on several (they never send a row twice)."""
    notify_webhook_url: SecretStr | None = None
    """POST each notification as JSON here (an SMS aggregator); unset: write them to the log."""

    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    log_format: LogFormat = LogFormat.JSON

    data_dir: Path = Path(".data")
    """Where ``gateway demo`` keeps embedded PostgreSQL/broker data and fleet output."""

    vending_time_zone: str = DEFAULT_DEPLOYMENT_TIME_ZONE
    """Vending's calendar months (blocks, fixed charges, free units) are taken in this zone."""
    vending_min_amount: Decimal = Field(Decimal("5.00"), ge=Decimal("0.01"), decimal_places=2)
    vending_max_amount: Decimal = Field(Decimal("10000.00"), gt=0, decimal_places=2)
    vending_free_electricity_kwh: Decimal = Field(Decimal(100), ge=0, le=10_000, decimal_places=1)
    vending_free_water_kl: Decimal = Field(Decimal(12), ge=0, le=1_000, decimal_places=1)
    vending_reversal_window_s: int = Field(600, ge=0, le=86_400)

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("deployment_time_zone", "vending_time_zone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        return check_time_zone(value)

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

    @field_validator("modbus_allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _check_serving(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together")
        if not (is_loopback_host(self.http_host) or self.tls or self.behind_tls_proxy):
            raise ValueError(
                f"refusing to serve HTTP without TLS on {self.http_host}: set"
                " GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE, or GATEWAY_BEHIND_TLS_PROXY=true"
                " if a TLS-terminating proxy is in front"
            )
        if self.session_idle_s > self.session_max_s:
            raise ValueError("GATEWAY_SESSION_IDLE_S must not exceed GATEWAY_SESSION_MAX_S")
        return self

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
        if self.vending_min_amount > self.vending_max_amount:
            raise ValueError(
                "GATEWAY_VENDING_MIN_AMOUNT must not exceed GATEWAY_VENDING_MAX_AMOUNT"
            )
        return self

    @field_validator("parts")
    @classmethod
    def _check_parts(cls, value: str) -> str:
        unknown = sorted(set(value.split(",")) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
        return value

    def runs(self, part: str) -> bool:
        """This process runs ``part`` (one of :data:`PARTS`)."""
        return part in self.parts.split(",")

    @property
    def tls(self) -> bool:
        """The gateway serves HTTPS itself."""
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def modbus_networks(self) -> tuple[IpNetwork, ...]:
        return parse_networks(self.modbus_allowed_networks)

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
        """User name and password from the URL, percent-decoded (RFC 3986 user-info)."""
        parts = urlsplit(self.mqtt_url.get_secret_value())
        if not parts.username:
            return None
        password = None if parts.password is None else unquote(parts.password)
        return unquote(parts.username), password

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
