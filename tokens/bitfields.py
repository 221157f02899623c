"""Shared pieces of the token bit layouts (IEC 62055-41 §6.2): token class and field checks.

Every token is class (2) | subclass (4) | 44 data bits | CRC (16); records validate each field
against its bit width (and, where the standard narrows it, its valid range) on construction.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from tokens.errors import ValueOutOfRangeError

__all__ = ["TID_MAX", "TokenClass", "check_field"]

TID_MAX: Final = (1 << 24) - 1


class TokenClass(IntEnum):
    """The 2-bit token class."""

    CREDIT = 0
    METER_TEST = 1
    MANAGEMENT = 2
    RESERVED = 3


def check_field(value: object, bits: int, what: str, *, lo: int = 0, hi: int | None = None) -> int:
    """``value`` if it is an int within ``lo``..``hi`` (default: what ``bits`` bits hold)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueOutOfRangeError(f"{what} must be an integer")
    top = (1 << bits) - 1 if hi is None else hi
    if not lo <= value <= top:
        raise ValueOutOfRangeError(f"{what} {value} is outside {lo}..{top}")
    return value
