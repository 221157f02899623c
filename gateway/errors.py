"""Errors of the gateway service, a subtree of the project's single error tree.

::

    protocols.errors.MeteringError
    └── GatewayError
        ├── ConfigError          settings invalid or unsafe; raised at start, before connecting
        ├── NotFoundError        a requested record (meter …) does not exist
        ├── StorageError         the database could not store a batch: see below
        │   ├── StorageUnavailableError  transient (connection lost, pool exhausted, shutdown,
        │   │                            deadlock, serialization, resources): retry the batch
        │   └── StorageRejectedError     permanent: the database refused the data itself
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
    "BrokerError",
    "ConfigError",
    "GatewayError",
    "MigrationError",
    "NotFoundError",
    "ServiceStartError",
    "StorageError",
    "StorageRejectedError",
    "StorageUnavailableError",
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


class MigrationError(GatewayError):
    """Schema migrations could not be applied."""


class BrokerError(GatewayError):
    """The MQTT broker could not be used."""


class ServiceStartError(GatewayError):
    """A local or embedded backing service could not be found or started."""
