"""Errors of the gateway service, a subtree of the project's single error tree.

::

    protocols.errors.MeteringError
    └── GatewayError
        ├── ConfigError          settings invalid or unsafe; raised at start, before connecting
        ├── NotFoundError        a requested record (meter …) does not exist
        ├── ValidationError      a request is well-formed but its content is unacceptable
        ├── ConflictError        a request contradicts what is stored (duplicate, stale state)
        ├── AuthError            no credentials, or credentials that are not valid
        ├── ForbiddenError       valid credentials without the right to do this
        ├── RateLimitedError     too many requests; ``retry_after_s`` says when to come back
        ├── PayloadTooLargeError a request body over the configured limit
        ├── ServiceUnavailableError  a dependency (the database …) cannot serve us right now
        ├── KeyStoreError        the key store cannot serve a key (wrong master key, missing key)
        ├── StorageError         the database could not store a batch: see below
        │   ├── StorageUnavailableError  transient (connection lost, pool exhausted, shutdown,
        │   │                            deadlock, serialization, resources): retry the batch
        │   └── StorageRejectedError     permanent: the database refused the data itself
        ├── MigrationError       schema migrations cannot be applied
        ├── BrokerError          the MQTT broker refused us or cannot be reached at start
        │   ├── BrokerRefusedError     CONNACK with a failure reason (``permanent``: no retry)
        │   ├── MqttProtocolError      the broker sent bytes or packets that break MQTT 5
        │   ├── KeepaliveTimeoutError  no PINGRESP within the keepalive interval
        │   ├── ConnectionLostError    the connection or client ended before an operation completed
        │   └── PublishRefusedError    PUBACK/PUBREC with a failure reason code
        ├── ListenError          the HTTP server cannot listen (port in use, bad address)
        ├── ModbusError          a Modbus device failed a poll: see gateway.modbus.errors
        └── ServiceStartError    an embedded PostgreSQL/broker could not be found or started

Third-party exceptions (psycopg, mqtt5, OSError) are translated into these once, at the wrapper
that called the library, with ``raise … from exc``. The HTTP API maps each class to a status in
one table (:mod:`gateway.http.errors`); a subclass inherits its parent's status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocols.errors import MeteringError

__all__ = [
    "AuthError",
    "BrokerError",
    "BrokerRefusedError",
    "ConfigError",
    "ConflictError",
    "ConnectionLostError",
    "FieldProblem",
    "ForbiddenError",
    "GatewayError",
    "KeepaliveTimeoutError",
    "KeyStoreError",
    "ListenError",
    "MigrationError",
    "MqttProtocolError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PublishRefusedError",
    "RateLimitedError",
    "ServiceStartError",
    "ServiceUnavailableError",
    "StorageError",
    "StorageRejectedError",
    "StorageUnavailableError",
    "ValidationError",
]


class GatewayError(MeteringError):
    """Root of the gateway service's errors."""


class ConfigError(GatewayError):
    """Settings are invalid or unsafe."""


class NotFoundError(GatewayError):
    """A requested record does not exist."""


class StorageError(GatewayError):
    """A database operation failed; raised by the storage layer, translated from psycopg."""


class StorageUnavailableError(StorageError):
    """The database cannot be used right now; the same operation may succeed later."""


class StorageRejectedError(StorageError):
    """The database refused the data; repeating the same operation will fail again."""


class KeyStoreError(GatewayError):
    """A key cannot be stored or used: wrong or missing master key, unknown key, bad key file."""


class MigrationError(GatewayError):
    """Schema migrations could not be applied."""


class BrokerError(GatewayError):
    """The MQTT broker could not be used."""


class ListenError(GatewayError):
    """The HTTP server cannot listen on its configured address."""


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


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """What is wrong with one field of a request: its dotted location and a short reason.

    The reason names the rule that was broken, never the value that broke it.
    """

    field: str
    message: str


class ValidationError(GatewayError):
    """A request is well-formed but its content is unacceptable (HTTP 422)."""

    def __init__(self, message: str, fields: Sequence[FieldProblem] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


class ConflictError(GatewayError):
    """A request contradicts what is stored: a duplicate, or a state that moved on (HTTP 409)."""


class AuthError(GatewayError):
    """Credentials are missing or not valid (HTTP 401)."""


class ForbiddenError(GatewayError):
    """The caller is known but may not do this (HTTP 403)."""


class RateLimitedError(GatewayError):
    """Too many requests from one caller (HTTP 429); retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLargeError(GatewayError):
    """A request body is larger than the configured limit (HTTP 413)."""


class ServiceUnavailableError(GatewayError):
    """A dependency cannot serve the request now (HTTP 503); retry after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
