"""The SDM630-style input-register map of docs/protocol.md §9, as pure functions.

Each channel is an IEEE-754 float32 over two 16-bit registers in the device's word order::

    value bytes (big-endian float32)  A B C D
    ABCD -> [AB, CD]   CDAB -> [CD, AB]   BADC -> [BA, DC]   DCBA -> [DC, BA]

A read must fall entirely on implemented registers, else the device answers exception 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from firmware_sim.identity import Utility
from protocols.modbus import DEFAULT_MAP, WordOrder, encode_float32

__all__ = ["ELECTRICITY_MAP", "WATER_MAP", "register_image"]

_WATER_ONLY: Final = frozenset({"24.2.1", "water.flow", "24.4.0"})
_WATER: Final = _WATER_ONLY | {"credit"}


def _device_map(
    channels: frozenset[str] | None, exclude: frozenset[str]
) -> dict[int, tuple[str, float]]:
    """address -> (channel, factor from the channel's unit to the register's), from §9's map."""
    return {
        spec.address: (spec.channel, 1.0 / spec.scale)
        for spec in DEFAULT_MAP.registers
        if (channels is None or spec.channel in channels) and spec.channel not in exclude
    }


ELECTRICITY_MAP: Final[Mapping[int, tuple[str, float]]] = _device_map(None, _WATER_ONLY)
WATER_MAP: Final[Mapping[int, tuple[str, float]]] = _device_map(_WATER, frozenset())


def register_image(
    values: Mapping[str, float], utility: Utility, order: WordOrder
) -> dict[int, int]:
    """Address -> 16-bit value for every register the device implements right now.

    Channels the meter does not have (a single-phase meter's L2/L3, credit on a post-paid
    meter) are not implemented and answer exception 2.
    """
    table = ELECTRICITY_MAP if utility is Utility.ELECTRICITY else WATER_MAP
    image: dict[int, int] = {}
    for address, (channel, scale) in table.items():
        value = values.get(channel)
        if value is None:
            continue
        image[address], image[address + 1] = encode_float32(value * scale, order)
    return image
