"""Modbus meters from the registry (the ``meters`` table, transport ``modbus``).

:func:`device_from_row` is pure: it turns one registry row into a validated
:class:`DeviceConfig` or raises :class:`UsageError` saying what is wrong with it.
:func:`load_devices` runs the query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from psycopg_pool import AsyncConnectionPool

from gateway.modbus.allowlist import DEFAULT_ALLOW_LIST, HostAllowList
from protocols.errors import UsageError
from protocols.modbus import DEFAULT_MAP, RegisterMap, WordOrder

__all__ = ["DeviceConfig", "LoadedDevices", "device_from_row", "load_devices"]


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """How to poll one meter; equal configs mean nothing to re-plan."""

    meter_id: str
    host: str
    port: int
    unit: int
    word_order: WordOrder
    register_map: RegisterMap
    interval_s: float

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, slots=True)
class LoadedDevices:
    devices: Mapping[str, DeviceConfig]
    invalid: Mapping[str, str]
    """meter_id -> why its registry row cannot be polled."""


_QUERY: Final = (
    "SELECT meter_id, modbus_host, modbus_port, modbus_unit, modbus_word_order, register_map,"
    " reporting_interval_s FROM meters WHERE transport = 'modbus'"
)


def device_from_row(
    meter_id: str,
    *,
    host: str | None,
    port: int | None,
    unit: int | None,
    word_order: str | None,
    register_map: object,
    interval_s: int | float,
) -> DeviceConfig:
    """Validate one registry row (the table's CHECKs cover most; the map is free JSON)."""
    if not host or port is None or unit is None:
        raise UsageError("modbus_host, modbus_port and modbus_unit are required")
    if not 1 <= port <= 65535 or not 0 <= unit <= 247:
        raise UsageError(f"bad port {port} or unit {unit}")
    try:
        order = WordOrder(word_order or WordOrder.ABCD)
    except ValueError:
        raise UsageError(f"unknown word order {str(word_order)[:10]!r}") from None
    regs = DEFAULT_MAP if register_map is None else RegisterMap.from_json(register_map)
    if interval_s <= 0:
        raise UsageError("reporting_interval_s must be positive")
    return DeviceConfig(meter_id, host, port, unit, order, regs, float(interval_s))


async def load_devices(
    pool: AsyncConnectionPool[Any],
    *,
    verified_only: bool,
    allowed: HostAllowList = DEFAULT_ALLOW_LIST,
) -> LoadedDevices:
    """Every Modbus meter of the registry (only verified ones if asked).

    Hosts are resolved here and checked against ``allowed``; a device's ``host`` is the checked
    address, and a meter outside the allow-list is reported invalid, never polled.
    """
    query = _QUERY + (" AND verified" if verified_only else "") + " ORDER BY meter_id"
    async with pool.connection() as conn:
        cur = await conn.execute(query)
        rows = await cur.fetchall()
    devices: dict[str, DeviceConfig] = {}
    invalid: dict[str, str] = {}
    for meter_id, host, port, unit, order, regmap, interval in rows:
        try:
            config = device_from_row(
                meter_id,
                host=host,
                port=port,
                unit=unit,
                word_order=order,
                register_map=regmap,
                interval_s=interval,
            )
            address = await allowed.resolve(config.host)
            devices[meter_id] = replace(config, host=address)
        except UsageError as exc:
            invalid[meter_id] = str(exc)
    return LoadedDevices(devices, invalid)
