"""Token data records: one frozen value object per token kind (IEC 62055-41 §6.2, §6.3).

A token carries 66 bits: class (2) | subclass (4) | 44 data bits | CRC (16). Each record here
knows its class and subclass and packs / unpacks its 44 data bits (high to low)::

    class 0 credit (sub 0 electricity, 1 water, 2 gas, 3 time; 4-7 currency unsupported)
                                RND (4) | TID (24) | amount (16)
    class 1 meter test/display  sub 0: control (36) | manufacturer code (8)
                                sub 1: control (28) | manufacturer code (16)
    class 2 management          RND (4) | TID (24) | value (16) for
                                sub 0 SetMaximumPowerLimit (W, amount encoding), 1 ClearCredit
                                (register, 0xFFFF = all), 2 SetTariffRate, 5 ClearTamperCondition
                                (pad), 6 SetMaximumPhasePowerUnbalanceLimit (W, amount encoding),
                                7 SetWaterMeterFactor
                                sub 3, 4, 8, 9: key-change sections (tokens.key_sections)

Amounts and power limits are normalised on construction to the value the token really
carries (rounded up, see :mod:`tokens.amount`), so ``decode(encode(r)) == r`` always holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final, Self

from tokens.amount import decode_amount, encode_amount
from tokens.bitfields import TID_MAX, TokenClass, check_field
from tokens.errors import UnsupportedTokenError, ValueOutOfRangeError
from tokens.key_sections import (
    Set1stSectionDecoderKey,
    Set2ndSectionDecoderKey,
    Set3rdSectionDecoderKey,
    Set4thSectionDecoderKey,
)

__all__ = [
    "RECORD_TYPES",
    "ClearCredit",
    "ClearTamperCondition",
    "InitiateMeterTestOrDisplay",
    "Medium",
    "Set1stSectionDecoderKey",
    "Set2ndSectionDecoderKey",
    "Set3rdSectionDecoderKey",
    "Set4thSectionDecoderKey",
    "SetMaximumPhasePowerUnbalanceLimit",
    "SetMaximumPowerLimit",
    "SetTariffRate",
    "SetWaterMeterFactor",
    "TokenClass",
    "TokenRecord",
    "TransferCredit",
    "record_from_body",
]


class Medium(IntEnum):
    """Class 0 subclass: what the credit is for (units of 0.1 kWh, 0.1 m3, ...)."""

    ELECTRICITY = 0
    WATER = 1
    GAS = 2
    TIME = 3

    @classmethod
    def parse(cls, value: object) -> Medium:
        """Accept a Medium, its subclass number or its lower-case name."""
        if isinstance(value, Medium):
            return value
        if isinstance(value, str):
            name = value.strip().upper()
            if name in cls.__members__:
                return cls[name]
            if name == "CURRENCY":
                raise UnsupportedTokenError("currency credit tokens are not supported")
        elif isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value <= 3:
                return cls(value)
            if 4 <= value <= 7:
                raise UnsupportedTokenError(
                    f"class 0 subclass {value} is a currency credit token, not supported"
                )
        raise ValueOutOfRangeError("medium must be electricity, water, gas or time")


def _check_rnd_tid(rnd: int, tid: int) -> None:
    check_field(rnd, 4, "RND")
    check_field(tid, 24, "TID")


def _rnd_tid_value(body: int) -> tuple[int, int, int]:
    return body >> 40, body >> 16 & TID_MAX, body & 0xFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferCredit:
    """Class 0: transfer credit of ``tenths`` tenths of a unit (rounded up on construction)."""

    medium: Medium
    tenths: int
    tid: int
    rnd: int
    token_class: ClassVar[TokenClass] = TokenClass.CREDIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "medium", Medium.parse(self.medium))
        object.__setattr__(self, "tenths", decode_amount(self.amount_field))
        _check_rnd_tid(self.rnd, self.tid)

    @property
    def subclass(self) -> int:
        return int(self.medium)

    @property
    def name(self) -> str:
        return f"Transfer{self.medium.name.capitalize()}Credit"

    @property
    def amount_field(self) -> int:
        """The 16-bit amount field."""
        return encode_amount(self.tenths, what="credit amount (tenths)")

    def body(self) -> int:
        return self.rnd << 40 | self.tid << 16 | self.amount_field

    @classmethod
    def from_body(cls, subclass: int, body: int) -> TransferCredit:
        rnd, tid, field = _rnd_tid_value(body)
        return cls(medium=Medium.parse(subclass), tenths=decode_amount(field), tid=tid, rnd=rnd)


@dataclass(frozen=True, slots=True, kw_only=True)
class InitiateMeterTestOrDisplay:
    """Class 1 (not encrypted): sub 0 = control (36) | MfrCode (8); sub 1 = (28) | (16)."""

    control: int
    manufacturer_code: int
    subclass: int = 0
    token_class: ClassVar[TokenClass] = TokenClass.METER_TEST

    def __post_init__(self) -> None:
        check_field(self.subclass, 1, "meter test subclass")
        control_bits, mfr_bits = (36, 8) if self.subclass == 0 else (28, 16)
        check_field(self.control, control_bits, "meter test control")
        check_field(self.manufacturer_code, mfr_bits, "manufacturer code")

    @property
    def name(self) -> str:
        return f"InitiateMeterTestOrDisplay{self.subclass + 1}"

    def body(self) -> int:
        shift = 8 if self.subclass == 0 else 16
        return self.control << shift | self.manufacturer_code

    @classmethod
    def from_body(cls, subclass: int, body: int) -> InitiateMeterTestOrDisplay:
        shift = 8 if subclass == 0 else 16
        return cls(
            control=body >> shift, manufacturer_code=body & ((1 << shift) - 1), subclass=subclass
        )


class _ManagementValue:
    """Layout shared by the class 2 management tokens: RND (4) | TID (24) | value (16).

    Each record names its value field (``_value_field``) and says how the 16 bits encode it:
    plain binary here, the amount encoding in :class:`_PowerLimit`.
    """

    __slots__ = ()
    _value_field: ClassVar[str]
    _value_label: ClassVar[str]
    rnd: int
    tid: int

    def _field(self) -> int:
        value: int = getattr(self, self._value_field)
        return value

    def __post_init__(self) -> None:
        check_field(self._field(), 16, self._value_label)
        _check_rnd_tid(self.rnd, self.tid)

    def body(self) -> int:
        return self.rnd << 40 | self.tid << 16 | self._field()

    @classmethod
    def from_body(cls, subclass: int, body: int) -> Self:
        del subclass
        rnd, tid, field = _rnd_tid_value(body)
        return cls(**{cls._value_field: cls._from_field(field), "tid": tid, "rnd": rnd})

    @classmethod
    def _from_field(cls, field: int) -> int:
        return field


class _PowerLimit(_ManagementValue):
    """A limit in watts, carried in the amount encoding and rounded up when built."""

    __slots__ = ()
    _value_field: ClassVar[str] = "watts"
    watts: int

    def __post_init__(self) -> None:
        field = encode_amount(self.watts, what=self._value_label)
        object.__setattr__(self, "watts", decode_amount(field))
        _check_rnd_tid(self.rnd, self.tid)

    def _field(self) -> int:
        return encode_amount(self.watts)

    @classmethod
    def _from_field(cls, field: int) -> int:
        return decode_amount(field)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMaximumPowerLimit(_PowerLimit):
    """Class 2 sub 0: maximum power limit in watts (amount encoding, rounded up)."""

    watts: int
    tid: int
    rnd: int
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 0
    name: ClassVar[str] = "SetMaximumPowerLimit"
    _value_label: ClassVar[str] = "power limit (W)"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMaximumPhasePowerUnbalanceLimit(_PowerLimit):
    """Class 2 sub 6: maximum phase power unbalance limit in watts (amount encoding)."""

    watts: int
    tid: int
    rnd: int
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 6
    name: ClassVar[str] = "SetMaximumPhasePowerUnbalanceLimit"
    _value_label: ClassVar[str] = "phase unbalance limit (W)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearCredit(_ManagementValue):
    """Class 2 sub 1: clear a credit register (its class 0 subclass; 0xFFFF = all)."""

    register: int
    tid: int
    rnd: int
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 1
    name: ClassVar[str] = "ClearCredit"
    ALL_REGISTERS: ClassVar[int] = 0xFFFF
    _value_field: ClassVar[str] = "register"
    _value_label: ClassVar[str] = "register"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTariffRate(_ManagementValue):
    """Class 2 sub 2: tariff rate (16-bit binary)."""

    rate: int
    tid: int
    rnd: int
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 2
    name: ClassVar[str] = "SetTariffRate"
    _value_field: ClassVar[str] = "rate"
    _value_label: ClassVar[str] = "tariff rate"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearTamperCondition(_ManagementValue):
    """Class 2 sub 5: clear the tamper flag; the 16-bit value is a pad (0 when issued)."""

    tid: int
    rnd: int
    pad: int = 0
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 5
    name: ClassVar[str] = "ClearTamperCondition"
    _value_field: ClassVar[str] = "pad"
    _value_label: ClassVar[str] = "pad"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetWaterMeterFactor(_ManagementValue):
    """Class 2 sub 7: water meter factor (16-bit binary)."""

    factor: int
    tid: int
    rnd: int
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 7
    name: ClassVar[str] = "SetWaterMeterFactor"
    _value_field: ClassVar[str] = "factor"
    _value_label: ClassVar[str] = "water meter factor"


TokenRecord = (
    TransferCredit
    | InitiateMeterTestOrDisplay
    | SetMaximumPowerLimit
    | ClearCredit
    | SetTariffRate
    | Set1stSectionDecoderKey
    | Set2ndSectionDecoderKey
    | ClearTamperCondition
    | SetMaximumPhasePowerUnbalanceLimit
    | SetWaterMeterFactor
    | Set3rdSectionDecoderKey
    | Set4thSectionDecoderKey
)
"""Any decoded or issuable token."""

_Management = (
    SetMaximumPowerLimit
    | ClearCredit
    | SetTariffRate
    | Set1stSectionDecoderKey
    | Set2ndSectionDecoderKey
    | ClearTamperCondition
    | SetMaximumPhasePowerUnbalanceLimit
    | SetWaterMeterFactor
    | Set3rdSectionDecoderKey
    | Set4thSectionDecoderKey
)
_MANAGEMENT_TYPES: Final[dict[int, type[_Management]]] = {
    t.subclass: t
    for t in (
        SetMaximumPowerLimit,
        ClearCredit,
        SetTariffRate,
        Set1stSectionDecoderKey,
        Set2ndSectionDecoderKey,
        ClearTamperCondition,
        SetMaximumPhasePowerUnbalanceLimit,
        SetWaterMeterFactor,
        Set3rdSectionDecoderKey,
        Set4thSectionDecoderKey,
    )
}
RECORD_TYPES: Final = (TransferCredit, InitiateMeterTestOrDisplay, *_MANAGEMENT_TYPES.values())
"""Every record type, for documentation and tests."""


def record_from_body(token_class: int, subclass: int, body: int) -> TokenRecord:
    """The record for a CRC-checked ``class | subclass | body``, or UnsupportedTokenError."""
    if token_class == TokenClass.CREDIT:
        if subclass <= 3:
            return TransferCredit.from_body(subclass, body)
        if subclass <= 7:
            raise UnsupportedTokenError(
                f"class 0 subclass {subclass} is a currency credit token, not supported"
            )
    elif token_class == TokenClass.METER_TEST:
        if subclass <= 1:
            return InitiateMeterTestOrDisplay.from_body(subclass, body)
    elif token_class == TokenClass.MANAGEMENT:
        management = _MANAGEMENT_TYPES.get(subclass)
        if management is not None:
            return management.from_body(subclass, body)
    raise UnsupportedTokenError(
        f"class {token_class} subclass {subclass} is reserved or not supported"
    )
