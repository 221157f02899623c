"""Modbus TCP polling of meters registered with transport ``modbus`` (docs/protocol.md §9).

Pure register-map and float32 logic lives in :mod:`protocols.modbus`; this package is the async
shell: the registry query (:mod:`.registry`), one pymodbus connection per endpoint
(:mod:`.client`), the per-endpoint polling loop (:mod:`.endpoint`) and the poller that keeps
those loops in step with the registry (:mod:`.poller`).
"""

from gateway.modbus.endpoint import PollerOptions, WorkSink, backoff_delay
from gateway.modbus.errors import (
    IllegalAddressError,
    ModbusBusyError,
    ModbusConnectError,
    ModbusDeviceError,
    ModbusError,
    ModbusTimeoutError,
)
from gateway.modbus.poller import ModbusPoller, run_modbus_poller
from gateway.modbus.registry import DeviceConfig, LoadedDevices, device_from_row, load_devices

__all__ = [
    "DeviceConfig",
    "IllegalAddressError",
    "LoadedDevices",
    "ModbusBusyError",
    "ModbusConnectError",
    "ModbusDeviceError",
    "ModbusError",
    "ModbusPoller",
    "ModbusTimeoutError",
    "PollerOptions",
    "WorkSink",
    "backoff_delay",
    "device_from_row",
    "load_devices",
    "run_modbus_poller",
]
