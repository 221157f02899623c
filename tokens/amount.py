"""The 16-bit STS amount field (IEC 62055-41 §6.3.5, DOMAIN.md §2 "Amount").

Layout: exponent ``e`` in bits 15-14, mantissa ``m`` in bits 13-0. The value, in integer tenths
of the unit (0.1 kWh, 0.1 m3 ...) or in watts for power limits, is::

    value = m * 10**e + sum(2**14 * 10**(n-1) for n in 1..e)

so the offsets are 0, 16384, 180224 and 1818624 and the largest value (0xFFFF) is 18 201 624.
Encoding rounds **up**, in the customer's favour: the smallest ``e`` whose
``m = ceil((value - offset_e) / 10**e)`` fits in 14 bits. Everything is integer arithmetic;
:func:`tenths_from_units` converts a decimal quantity (``"1.82"`` kWh) to tenths, rounding up.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Final

from tokens.errors import ValueOutOfRangeError

__all__ = [
    "AMOUNT_OFFSETS",
    "MAX_AMOUNT",
    "decode_amount",
    "encode_amount",
    "representable_amount",
    "tenths_from_units",
]

_MANTISSA_MAX: Final = (1 << 14) - 1
AMOUNT_OFFSETS: Final = (0, 16384, 180224, 1818624)
"""Offset added for exponents 0..3."""
MAX_AMOUNT: Final = _MANTISSA_MAX * 1000 + AMOUNT_OFFSETS[3]
"""18 201 624: the value of the field 0xFFFF."""
_POW10: Final = (1, 10, 100, 1000)


def encode_amount(value: int, *, what: str = "amount") -> int:
    """Return the 16-bit field for ``value`` (tenths or watts), rounding up."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueOutOfRangeError(f"{what} must be an integer, got {type(value).__name__}")
    if value < 0 or value > MAX_AMOUNT:
        raise ValueOutOfRangeError(f"{what} {value} is outside 0..{MAX_AMOUNT}")
    for exponent in range(4):
        scale = _POW10[exponent]
        # ceil division on integers; a negative numerator (value just above the previous
        # exponent's maximum but below this offset) rounds up to mantissa 0.
        mantissa = max(0, -((AMOUNT_OFFSETS[exponent] - value) // scale))
        if mantissa <= _MANTISSA_MAX:
            return (exponent << 14) | mantissa
    raise AssertionError("unreachable: MAX_AMOUNT fits exponent 3")  # pragma: no cover


def decode_amount(field: int) -> int:
    """Return the value (tenths or watts) of a 16-bit amount field."""
    if not 0 <= field <= 0xFFFF:
        raise ValueOutOfRangeError(f"amount field {field} is not a 16-bit value")
    exponent = field >> 14
    return (field & _MANTISSA_MAX) * _POW10[exponent] + AMOUNT_OFFSETS[exponent]


def representable_amount(value: int, *, what: str = "amount") -> int:
    """The value a token actually carries when ``value`` is requested (rounded up)."""
    return decode_amount(encode_amount(value, what=what))


def tenths_from_units(units: Decimal | str | int) -> int:
    """Convert a decimal quantity of whole units (kWh, m3 ...) to tenths, rounding up.

    ``tenths_from_units("1.82") == 19``. Floats are refused: their binary value is not the
    decimal the customer paid for.
    """
    if isinstance(units, (bool, float)):
        raise ValueOutOfRangeError("units must be a Decimal, a decimal string or an int")
    try:
        quantity = Decimal(units)
    except (InvalidOperation, ValueError) as exc:
        raise ValueOutOfRangeError(f"{units!r} is not a decimal quantity") from exc
    if not quantity.is_finite() or quantity < 0:
        raise ValueOutOfRangeError(f"{units!r} is not a non-negative finite quantity")
    return int((quantity * 10).to_integral_value(rounding=ROUND_CEILING))
