"""Key-change tokens: class 2 subclasses 3, 4, 8 and 9 (IEC 62055-41 §6.3.7, DOMAIN.md §2).

44 data bits each, high to low::

    sub 3 Set1stSectionDecoderKey  KENHO (4) | KRN (4) | RO (1) | RES (1) | KT (2) | NKHO (32)
    sub 4 Set2ndSectionDecoderKey  KENLO (4) | TI (8, binary) | NKLO (32)
    sub 8 Set3rdSectionDecoderKey  SGC bits 11..0 (12) | NKMO2 (32)      128-bit keys only
    sub 9 Set4thSectionDecoderKey  SGC bits 23..12 (12) | NKMO1 (32)     128-bit keys only

The new key is NKHO ‖ NKLO (64-bit) or NKHO ‖ NKMO2 ‖ NKMO1 ‖ NKLO (128-bit). The sections
carry no TID and are encrypted under the meter's current key; :mod:`tokens.vending` splits a
key into sections and assembles them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from tokens.bitfields import TokenClass, check_field

__all__ = [
    "Set1stSectionDecoderKey",
    "Set2ndSectionDecoderKey",
    "Set3rdSectionDecoderKey",
    "Set4thSectionDecoderKey",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Set1stSectionDecoderKey:
    """Class 2 sub 3: KENHO | KRN (1-9) | RO | RES | KT (0-3) | NKHO (new key bits 63..32
    of a 64-bit key, bytes 0-3 of a 128-bit key)."""

    ken_high: int
    krn: int
    ro: int
    key_type: int
    nk_high: int = field(repr=False)  # part of the new decoder key: a secret
    res: int = 0
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 3
    name: ClassVar[str] = "Set1stSectionDecoderKey"

    def __post_init__(self) -> None:
        check_field(self.ken_high, 4, "KENHO")
        check_field(self.krn, 4, "KRN", lo=1, hi=9)
        check_field(self.ro, 1, "RO")
        check_field(self.res, 1, "RES")
        check_field(self.key_type, 2, "KT")
        check_field(self.nk_high, 32, "NKHO")

    def body(self) -> int:
        return (
            self.ken_high << 40 | self.krn << 36 | self.ro << 35 | self.res << 34
            | self.key_type << 32 | self.nk_high
        )  # fmt: skip

    @classmethod
    def from_body(cls, subclass: int, body: int) -> Set1stSectionDecoderKey:
        return cls(
            ken_high=body >> 40, krn=body >> 36 & 15, ro=body >> 35 & 1, res=body >> 34 & 1,
            key_type=body >> 32 & 3, nk_high=body & 0xFFFFFFFF,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Set2ndSectionDecoderKey:
    """Class 2 sub 4: KENLO | TI (8-bit binary, 0-99) | NKLO (the key's last 4 bytes)."""

    ken_low: int
    ti: int
    nk_low: int = field(repr=False)  # part of the new decoder key: a secret
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 4
    name: ClassVar[str] = "Set2ndSectionDecoderKey"

    def __post_init__(self) -> None:
        check_field(self.ken_low, 4, "KENLO")
        check_field(self.ti, 8, "TI", hi=99)
        check_field(self.nk_low, 32, "NKLO")

    def body(self) -> int:
        return self.ken_low << 40 | self.ti << 32 | self.nk_low

    @classmethod
    def from_body(cls, subclass: int, body: int) -> Set2ndSectionDecoderKey:
        return cls(ken_low=body >> 40, ti=body >> 32 & 0xFF, nk_low=body & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True, kw_only=True)
class Set3rdSectionDecoderKey:
    """Class 2 sub 8 (128-bit keys): SGC bits 11..0 | NKMO2 (key bytes 4-7)."""

    sgc_low: int
    nk_mid2: int = field(repr=False)  # part of the new decoder key: a secret
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 8
    name: ClassVar[str] = "Set3rdSectionDecoderKey"

    def __post_init__(self) -> None:
        check_field(self.sgc_low, 12, "SGC low bits")
        check_field(self.nk_mid2, 32, "NKMO2")

    def body(self) -> int:
        return self.sgc_low << 32 | self.nk_mid2

    @classmethod
    def from_body(cls, subclass: int, body: int) -> Set3rdSectionDecoderKey:
        return cls(sgc_low=body >> 32, nk_mid2=body & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True, kw_only=True)
class Set4thSectionDecoderKey:
    """Class 2 sub 9 (128-bit keys): SGC bits 23..12 | NKMO1 (key bytes 8-11)."""

    sgc_high: int
    nk_mid1: int = field(repr=False)  # part of the new decoder key: a secret
    token_class: ClassVar[TokenClass] = TokenClass.MANAGEMENT
    subclass: ClassVar[int] = 9
    name: ClassVar[str] = "Set4thSectionDecoderKey"

    def __post_init__(self) -> None:
        check_field(self.sgc_high, 12, "SGC high bits")
        check_field(self.nk_mid1, 32, "NKMO1")

    def body(self) -> int:
        return self.sgc_high << 32 | self.nk_mid1

    @classmethod
    def from_body(cls, subclass: int, body: int) -> Set4thSectionDecoderKey:
        return cls(sgc_high=body >> 32, nk_mid1=body & 0xFFFFFFFF)
