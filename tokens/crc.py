"""The 16-bit token CRC (IEC 62055-41 §6.3.6, DOMAIN.md §2 "CRC").

Input: the 50 bits class(2) | subclass(4) | 44 data bits, as 7 big-endian bytes (6 leading
zero bits). Algorithm: CRC-16/MODBUS (reflected polynomial 0xA001, initial 0xFFFF, no final
XOR); the token field is that register with its two bytes swapped. A 256-entry table keeps it
to seven lookups.
"""

from __future__ import annotations

from typing import Final

__all__ = ["crc16_modbus", "token_crc"]


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE: Final = _make_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS register value of ``data`` (not byte-swapped)."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def token_crc(crc_input: int) -> int:
    """CRC field for the 50-bit ``class | subclass | data`` value ``crc_input``."""
    table = _TABLE
    crc = 0xFFFF
    for shift in (48, 40, 32, 24, 16, 8, 0):
        crc = (crc >> 8) ^ table[(crc ^ (crc_input >> shift)) & 0xFF]
    return ((crc & 0xFF) << 8) | (crc >> 8)
