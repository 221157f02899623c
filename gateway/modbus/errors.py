"""Why a Modbus request produced no data: a subtree of the gateway's error tree.

::

    protocols.errors.MeteringError
    └── GatewayError
        └── ModbusError                 a Modbus request produced no data
            ├── ModbusTimeoutError      no answer within the request timeout
            ├── ModbusConnectError      the endpoint cannot be reached or dropped the connection
            └── ModbusDeviceError       the device answered with a Modbus exception code
                ├── ModbusBusyError     exception 6, slave device busy (§9: missing data, not 0)
                └── IllegalAddressError exception 2, a register the device does not implement

pymodbus exceptions are translated into these once, in :mod:`gateway.modbus.client`. Each class
carries the ``result`` label it is counted under in ``gateway_modbus_polls``.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import GatewayError

__all__ = [
    "IllegalAddressError",
    "ModbusBusyError",
    "ModbusConnectError",
    "ModbusDeviceError",
    "ModbusError",
    "ModbusTimeoutError",
]


class ModbusError(GatewayError):
    """A Modbus request produced no data."""

    result: ClassVar[str] = "failed"


class ModbusTimeoutError(ModbusError):
    result = "timeout"


class ModbusConnectError(ModbusError):
    result = "failed"


class ModbusDeviceError(ModbusError):
    """The device answered with exception ``code`` (Modbus application protocol §7)."""

    result = "failed"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ModbusBusyError(ModbusDeviceError):
    result = "busy"


class IllegalAddressError(ModbusDeviceError):
    """Not a failure of the poll: the plan drops the register (§9)."""
