"""Meter numbers: PAN, DRN, Luhn check digits and the DKGA PANBlock (IEC 62055-41 §6.1.2).

An 18-digit meter PAN is either::

    IIN "600727" | DRN (11 digits) | PAN check digit
    IIN "0000"   | DRN (13 digits) | PAN check digit

The DRN's last digit is the Luhn check digit of its other digits; the PAN check digit is the
Luhn check digit of IIN‖DRN. The PANBlock used by the decoder key generation algorithms is the
16 rightmost digits of IIN‖DRN (without the PAN check digit), read as hex nibbles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tokens.errors import InvalidMeterNumberError

__all__ = ["IIN_LONG", "IIN_SHORT", "MeterNumber", "luhn_check_digit", "luhn_valid"]

IIN_LONG: Final = "600727"
"""IIN of STS meters with an 11-digit DRN."""
IIN_SHORT: Final = "0000"
"""IIN of STS meters with a 13-digit DRN."""
_DRN_LENGTH: Final = {IIN_LONG: 11, IIN_SHORT: 13}


def _require_digits(text: str, what: str) -> None:
    if not isinstance(text, str) or not text.isascii() or not text.isdigit():
        raise InvalidMeterNumberError(f"{what} must be a string of decimal digits")


def luhn_check_digit(digits: str) -> int:
    """The Luhn (mod 10) check digit to append to ``digits``."""
    _require_digits(digits, "Luhn input")
    total = 0
    # The rightmost payload digit is doubled (it sits next to the check digit).
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


def luhn_valid(number: str) -> bool:
    """True when the last digit of ``number`` is the Luhn check digit of the others."""
    _require_digits(number, "number")
    return len(number) >= 2 and luhn_check_digit(number[:-1]) == ord(number[-1]) - 48


@dataclass(frozen=True, slots=True)
class MeterNumber:
    """A meter's IIN and DRN (DRN including its own check digit), both validated."""

    iin: str
    drn: str

    def __post_init__(self) -> None:
        if self.iin not in _DRN_LENGTH:
            raise InvalidMeterNumberError(
                f"IIN must be {IIN_LONG!r} or {IIN_SHORT!r}, got {self.iin!r}"
            )
        _require_digits(self.drn, "DRN")
        expected = _DRN_LENGTH[self.iin]
        if len(self.drn) != expected:
            raise InvalidMeterNumberError(
                f"a DRN under IIN {self.iin} has {expected} digits, got {len(self.drn)}"
            )
        if not luhn_valid(self.drn):
            raise InvalidMeterNumberError(f"DRN {self.drn} fails its Luhn check digit")

    @classmethod
    def from_pan(cls, pan: str) -> MeterNumber:
        """Parse an 18-digit meter PAN, checking both Luhn check digits."""
        _require_digits(pan, "meter PAN")
        if len(pan) != 18:
            raise InvalidMeterNumberError(f"a meter PAN has 18 digits, got {len(pan)}")
        for iin, drn_length in _DRN_LENGTH.items():
            if pan.startswith(iin):
                meter = cls(iin=iin, drn=pan[len(iin) : len(iin) + drn_length])
                break
        else:
            raise InvalidMeterNumberError(
                f"a meter PAN starts with IIN {IIN_LONG} or {IIN_SHORT}, got {pan[:6]}"
            )
        if not luhn_valid(pan):
            raise InvalidMeterNumberError(f"meter PAN {pan} fails its Luhn check digit")
        return meter

    @classmethod
    def from_drn(cls, drn: str) -> MeterNumber:
        """A meter from its DRN alone: 11 digits imply IIN 600727, 13 digits IIN 0000."""
        _require_digits(drn, "DRN")
        for iin, drn_length in _DRN_LENGTH.items():
            if len(drn) == drn_length:
                return cls(iin=iin, drn=drn)
        raise InvalidMeterNumberError(f"a DRN has 11 or 13 digits, got {len(drn)}")

    @property
    def pan(self) -> str:
        """The 18-digit meter PAN, with its check digit."""
        body = self.iin + self.drn
        return body + str(luhn_check_digit(body))

    @property
    def pan_block(self) -> int:
        """The 64-bit PANBlock: the 16 rightmost digits of IIN‖DRN read as hex nibbles."""
        return int((self.iin + self.drn)[-16:], 16)

    def __str__(self) -> str:
        return self.pan
