"""Errors of the gateway service, a subtree of the project's single error tree.

::

    protocols.errors.MeteringError
    └── GatewayError
        ├── ConfigError          settings invalid or unsafe; raised at start, before connecting
        ├── NotFoundError        a requested record (meter …) does not exist
        ├── InvalidInputError    a request is malformed in a way the schema could not say (HTTP 422)
        ├── ConflictError        the request contradicts what is stored (a name already taken …)
        ├── AuthError            no valid credentials (HTTP 401)
        ├── ForbiddenError       valid credentials, not allowed to do this (HTTP 403)
        ├── RateLimited          too many requests from one principal (HTTP 429 + Retry-After)
        ├── KeyStoreError        the key store cannot serve a key (wrong master key, missing key)
        ├── StorageError         the database failed in a way retrying will not fix
        ├── MigrationError       schema migrations cannot be applied
        ├── BrokerError          the MQTT broker refused us or cannot be reached at start
        ├── ModbusError          a Modbus device failed a poll: see gateway.modbus.errors
        └── ServiceStartError    an embedded PostgreSQL/broker could not be found or started

Third-party exceptions (psycopg, gmqtt, OSError) are translated into these once, at the wrapper
that called the library, with ``raise … from exc``.
"""

from __future__ import annotations

from protocols.errors import MeteringError

__all__ = [
    "AuthError",
    "BrokerError",
    "ConfigError",
    "ConflictError",
    "ForbiddenError",
    "GatewayError",
    "InvalidInputError",
    "KeyStoreError",
    "MigrationError",
    "NotFoundError",
    "RateLimited",
    "ServiceStartError",
    "StorageError",
]


class GatewayError(MeteringError):
    """Root of the gateway service's errors."""


class ConfigError(GatewayError):
    """Settings are invalid or unsafe."""


class NotFoundError(GatewayError):
    """A requested record does not exist."""


class InvalidInputError(GatewayError):
    """A request is malformed in a way its schema could not express."""


class ConflictError(GatewayError):
    """The request contradicts what is stored (a name already taken, a disabled principal …)."""


class AuthError(GatewayError):
    """No valid credentials were presented. The message never says which part was wrong."""


class ForbiddenError(GatewayError):
    """The principal is authenticated but its role does not allow this."""


class RateLimited(GatewayError):  # noqa: N818 - the name other modules code against
    """Too many requests from one principal; try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KeyStoreError(GatewayError):
    """A key cannot be stored or used: wrong or missing master key, unknown key, bad key file."""


class StorageError(GatewayError):
    """A database operation failed permanently."""


class MigrationError(GatewayError):
    """Schema migrations could not be applied."""


class BrokerError(GatewayError):
    """The MQTT broker could not be used."""


class ServiceStartError(GatewayError):
    """A local or embedded backing service could not be found or started."""
