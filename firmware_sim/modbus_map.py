"""The SDM630-style input-register map of docs/protocol.md §9, as pure functions.

Each channel is an IEEE-754 float32 over two 16-bit registers in the device's word order::

    value bytes (big-endian float32)  A B C D
    ABCD -> [AB, CD]   CDAB -> [CD, AB]   BADC -> [BA, DC]   DCBA -> [DC, BA]

A read must fall entirely on implemented registers, else the device answers exception 2.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

from firmware_sim.identity import Utility, WordOrder

__all__ = ["ELECTRICITY_MAP", "WATER_MAP", "float_registers", "register_image"]

# register address -> (channel, scale to the register's unit)
ELECTRICITY_MAP: Final[Mapping[int, tuple[str, float]]] = {
    0x0000: ("32.7.0", 1.0),
    0x0002: ("52.7.0", 1.0),
    0x0004: ("72.7.0", 1.0),
    0x0006: ("31.7.0", 1.0),
    0x0008: ("51.7.0", 1.0),
    0x000A: ("71.7.0", 1.0),
    0x000C: ("21.7.0", 1000.0),
    0x000E: ("41.7.0", 1000.0),
    0x0010: ("61.7.0", 1000.0),
    0x0034: ("1.7.0", 1000.0),
    0x0046: ("14.7.0", 1.0),
    0x0048: ("1.8.0", 1.0),
    0x004A: ("2.8.0", 1.0),
    0x0104: ("credit", 1.0),
    0x0200: ("96.3.10", 1.0),
}
WATER_MAP: Final[Mapping[int, tuple[str, float]]] = {
    0x0100: ("24.2.1", 1.0),
    0x0102: ("water.flow", 1.0),
    0x0104: ("credit", 1.0),
    0x0202: ("24.4.0", 1.0),
}


def float_registers(value: float, order: WordOrder) -> tuple[int, int]:
    a, b, c, d = struct.pack(">f", value)
    match order:
        case WordOrder.ABCD:
            return a << 8 | b, c << 8 | d
        case WordOrder.CDAB:
            return c << 8 | d, a << 8 | b
        case WordOrder.BADC:
            return b << 8 | a, d << 8 | c
        case WordOrder.DCBA:
            return d << 8 | c, b << 8 | a


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
        high, low = float_registers(value * scale, order)
        image[address] = high
        image[address + 1] = low
    return image
