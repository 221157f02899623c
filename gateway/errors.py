"""Errors of the gateway service, a subtree of the project's single error tree.

::

    protocols.errors.MeteringError
    └── GatewayError
        ├── ConfigError          settings invalid or unsafe; raised at start, before connecting
        ├── NotFoundError        a requested record (meter …) does not exist
        ├── StorageError         the database failed in a way retrying will not fix
        ├── MigrationError       schema migrations cannot be applied
        ├── BrokerError          the MQTT broker refused us or cannot be reached at start
        │   ├── BrokerRefusedError     CONNACK with a failure reason (``permanent``: no retry)
        │   ├── MqttProtocolError      the broker sent bytes or packets that break MQTT 5
        │   ├── KeepaliveTimeoutError  no PINGRESP within the keepalive interval
        │   ├── ConnectionLostError    the connection or client ended before an operation completed
        │   └── PublishRefusedError    PUBACK/PUBREC with a failure reason code
        ├── ModbusError          a Modbus device failed a poll: see gateway.modbus.errors
        └── ServiceStartError    an embedded PostgreSQL/broker could not be found or started

Third-party exceptions (psycopg, mqtt5, OSError) are translated into these once, at the wrapper
that called the library, with ``raise … from exc``.
"""

from __future__ import annotations

from protocols.errors import MeteringError

__all__ = [
    "BrokerError",
    "BrokerRefusedError",
    "ConfigError",
    "ConnectionLostError",
    "GatewayError",
    "KeepaliveTimeoutError",
    "MigrationError",
    "MqttProtocolError",
    "NotFoundError",
    "PublishRefusedError",
    "ServiceStartError",
    "StorageError",
]


class GatewayError(MeteringError):
    """Root of the gateway service's errors."""


class ConfigError(GatewayError):
    """Settings are invalid or unsafe."""


class NotFoundError(GatewayError):
    """A requested record does not exist."""


class StorageError(GatewayError):
    """A database operation failed permanently."""


class MigrationError(GatewayError):
    """Schema migrations could not be applied."""


class BrokerError(GatewayError):
    """The MQTT broker could not be used."""


class BrokerRefusedError(BrokerError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(
        self, reason: str, code: int, *, permanent: bool, detail: str | None = None
    ) -> None:
        super().__init__(
            f"broker refused the connection: {reason}" + (f" ({detail[:200]})" if detail else "")
        )
        self.code = code
        self.permanent = permanent
        """Retrying with the same settings cannot succeed (credentials, client id, protocol)."""


class MqttProtocolError(BrokerError):
    """The broker sent bytes or packets that break MQTT 5; the connection must be closed."""


class KeepaliveTimeoutError(BrokerError):
    """The broker did not answer a PINGREQ within the keepalive interval."""


class ConnectionLostError(BrokerError):
    """The connection to the broker, or the client, ended before the operation completed."""


class PublishRefusedError(BrokerError):
    """The broker answered a publish with a failure reason code (PUBACK/PUBREC ≥ 0x80)."""

    def __init__(self, topic: str, code: int, reason: str) -> None:
        super().__init__(f"broker refused a publish to {topic[:200]}: {reason} ({code:#x})")
        self.code = code


class ServiceStartError(GatewayError):
    """A local or embedded backing service could not be found or started."""
