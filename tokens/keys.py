"""Vending keys, decoder keys and their generation (IEC 62055-41 §6.1, §6.5; DOMAIN.md §2).

Key parameters (validated by :class:`KeyParameters`): KT key type 0-3, SGC six digits, TI
tariff index 0-99, KRN key revision number 1-9, base date 1993/2014/2035, encryption algorithm
EA07 (STA, 64-bit key), EA11 (MISTY1, 128-bit key) or EA09 (DES, deprecated).

* DKGA02 (64-bit vending key VK)::

      PANBlock     = 16 rightmost digits of IIN‖DRN, as hex nibbles
      CONTROLBlock = KT(1) ‖ SGC(6) ‖ TI(2) ‖ KRN(1) ‖ "FFFFFF", as hex nibbles
      X = PANBlock XOR CONTROLBlock
      decoder key = DES_VK(X) XOR X XOR VK

* DKGA04 (160-bit vending key): one block of the SP 800-108 KDF in feedback mode with
  HMAC-SHA-256 keyed by VK. The message is a length-prefixed label list, a zero byte, a
  length-prefixed context list and the output length in bits (4 bytes big-endian)::

      04 | "04" | base date code | EA code | TI (2 digits) | 00
      04 | SGC (6 digits) | KT (1 digit) | KRN (1 digit) | meter PAN (18 digits) | L

  (each item as one length byte and its ASCII text); the decoder key is the first 8 (EA07) or
  16 (EA11) bytes of the HMAC.

Keys are written in natural byte order. Key bytes are secrets: no ``repr`` or error message here
shows them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Final, Protocol

from tokens.des import Des
from tokens.errors import KeyParameterError
from tokens.meter_number import MeterNumber
from tokens.misty1 import Misty1
from tokens.sta import Sta
from tokens.tid import BaseDate

__all__ = [
    "BlockCipher",
    "DecoderKey",
    "Dkga",
    "EncryptionAlgorithm",
    "KeyParameters",
    "KeyType",
    "VendingKey",
    "derive_decoder_key",
    "dkga02",
    "dkga04",
    "dkga04_message",
    "normalise_digits",
]


class BlockCipher(Protocol):
    """A 64-bit block cipher bound to a key, on integers."""

    def encrypt(self, block: int) -> int: ...

    def decrypt(self, block: int) -> int: ...


class EncryptionAlgorithm(StrEnum):
    """Token encryption algorithm, by its two-digit STS code."""

    EA07 = "07"
    """STA, 64-bit key."""
    EA09 = "09"
    """DES, 64-bit key. Deprecated by the STS Association; no public vectors."""
    EA11 = "11"
    """MISTY1, 128-bit key."""

    @property
    def key_bytes(self) -> int:
        """Decoder key length in bytes."""
        return 16 if self is EncryptionAlgorithm.EA11 else 8

    @property
    def key_change_sections(self) -> int:
        """Number of key-change tokens needed to carry a decoder key of this algorithm."""
        return 4 if self.key_bytes == 16 else 2

    @classmethod
    def parse(cls, value: object) -> EncryptionAlgorithm:
        """Accept "07", "EA07", "7", 7 (and likewise for 09 and 11)."""
        if isinstance(value, EncryptionAlgorithm):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            text = f"{value:02d}"
        elif isinstance(value, str):
            text = value.strip().upper().removeprefix("EA").zfill(2)
        else:
            text = ""
        try:
            return cls(text)
        except ValueError:
            raise KeyParameterError("encryption algorithm must be 07, 09 or 11") from None

    def cipher(self, key: bytes) -> BlockCipher:
        """A block cipher of this algorithm bound to ``key``."""
        if self is EncryptionAlgorithm.EA07:
            return Sta(key)
        if self is EncryptionAlgorithm.EA11:
            return Misty1(key)
        return Des(key)


class KeyType(IntEnum):
    """KT: the decoder key type."""

    INITIALISING = 0
    DEFAULT = 1
    UNIQUE = 2
    COMMON = 3

    @classmethod
    def parse(cls, value: object) -> KeyType:
        """Accept 0-3 as an int or a one-digit string."""
        if isinstance(value, KeyType):
            return value
        return cls(int(normalise_digits(value, 1, "key type (KT)", hi=3)))


class Dkga(StrEnum):
    """Decoder key generation algorithm."""

    DKGA02 = "02"
    DKGA04 = "04"

    @property
    def vending_key_bytes(self) -> int:
        """Vending key length: 8 bytes (DES) for DKGA02, 20 bytes for DKGA04."""
        return 8 if self is Dkga.DKGA02 else 20

    @classmethod
    def parse(cls, value: object) -> Dkga:
        """Accept "02", "DKGA02", 2 (and likewise for 04)."""
        if isinstance(value, Dkga):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            text = f"{value:02d}"
        elif isinstance(value, str):
            text = value.strip().upper().removeprefix("DKGA").zfill(2)
        else:
            text = ""
        try:
            return cls(text)
        except ValueError:
            raise KeyParameterError("DKGA must be 02 or 04") from None


def _key_from_hex(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyParameterError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KeyParameterError(f"{what} is not valid hex") from None


@dataclass(frozen=True, slots=True)
class VendingKey:
    """A vending key (secret). Its bytes never appear in ``repr`` or messages."""

    dkga: Dkga
    secret: bytes = field(repr=False)
    _des: list[Des] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes):
            raise KeyParameterError("vending key must be bytes")
        if len(self.secret) != self.dkga.vending_key_bytes:
            raise KeyParameterError(
                f"a DKGA{self.dkga.value} vending key has {self.dkga.vending_key_bytes} bytes, "
                f"got {len(self.secret)}"
            )

    @classmethod
    def from_hex(cls, dkga: Dkga | str, text: str) -> VendingKey:
        """Build from hex text (the error never echoes the text)."""
        return cls(Dkga.parse(dkga), _key_from_hex(text, "vending key"))

    def __repr__(self) -> str:
        return f"VendingKey(dkga={self.dkga.value!r}, <{len(self.secret)} bytes hidden>)"

    def des(self) -> Des:
        """The DES cipher under this key (built once, for DKGA02)."""
        if not self._des:
            self._des.append(Des(self.secret))
        return self._des[0]


@dataclass(frozen=True, slots=True)
class DecoderKey:
    """A meter's decoder key and its encryption algorithm. ``repr`` hides the key bytes."""

    ea: EncryptionAlgorithm
    key: bytes = field(repr=False)
    _cipher: list[BlockCipher] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.ea, EncryptionAlgorithm):
            object.__setattr__(self, "ea", EncryptionAlgorithm.parse(self.ea))
        if not isinstance(self.key, bytes):
            raise KeyParameterError("decoder key must be bytes")
        if len(self.key) != self.ea.key_bytes:
            raise KeyParameterError(
                f"an EA{self.ea.value} decoder key has {self.ea.key_bytes} bytes, "
                f"got {len(self.key)}"
            )

    @classmethod
    def from_hex(cls, text: str, ea: EncryptionAlgorithm | str) -> DecoderKey:
        """Build from hex text (the error never echoes the text)."""
        return cls(EncryptionAlgorithm.parse(ea), _key_from_hex(text, "decoder key"))

    def __repr__(self) -> str:
        return f"DecoderKey(ea={self.ea.value!r}, <{len(self.key)} bytes hidden>)"

    @property
    def cipher(self) -> BlockCipher:
        """The block cipher bound to this key (built on first use, then cached)."""
        cached = self._cipher
        if not cached:
            cached.append(self.ea.cipher(self.key))
        return cached[0]


def normalise_digits(
    value: object,
    width: int,
    what: str,
    *,
    lo: int = 0,
    hi: int | None = None,
    exact_text: bool = False,
) -> str:
    """Normalise an int or a digit string to exactly ``width`` digits within lo..hi.

    With ``exact_text`` a string must already have ``width`` digits (an SGC is "six digits").
    """
    if isinstance(value, bool):
        raise KeyParameterError(f"{what} must be a number")
    if isinstance(value, int):
        number = value
    elif (
        isinstance(value, str)
        and value.isascii()
        and value.isdigit()
        and (len(value) == width if exact_text else len(value) <= width)
    ):
        number = int(value)
    else:
        size = "exactly" if exact_text else "at most"
        raise KeyParameterError(f"{what} must be {size} {width} decimal digits")
    top = 10**width - 1 if hi is None else hi
    if not lo <= number <= top:
        raise KeyParameterError(f"{what} must be in {lo}..{top}, got {number}")
    return f"{number:0{width}d}"


@dataclass(frozen=True, slots=True)
class KeyParameters:
    """Everything, besides the vending key, that determines a meter's decoder key.

    ``sgc`` is kept as its six-digit text, ``ti`` / ``krn`` / ``key_type`` as integers; ints and
    digit strings are both accepted and normalised.
    """

    meter: MeterNumber
    key_type: KeyType
    sgc: str
    ti: int
    krn: int
    base_date: BaseDate = BaseDate.Y1993
    ea: EncryptionAlgorithm = EncryptionAlgorithm.EA07

    def __post_init__(self) -> None:
        if not isinstance(self.meter, MeterNumber):
            raise KeyParameterError("meter must be a MeterNumber")
        object.__setattr__(self, "key_type", KeyType.parse(self.key_type))
        sgc = normalise_digits(self.sgc, 6, "supply group code (SGC)", exact_text=True)
        object.__setattr__(self, "sgc", sgc)
        object.__setattr__(self, "ti", int(normalise_digits(self.ti, 2, "tariff index (TI)")))
        krn = int(normalise_digits(self.krn, 1, "key revision (KRN)", lo=1))
        object.__setattr__(self, "krn", krn)
        object.__setattr__(self, "base_date", BaseDate.parse(self.base_date))
        object.__setattr__(self, "ea", EncryptionAlgorithm.parse(self.ea))

    @property
    def control_block(self) -> int:
        """DKGA02 CONTROLBlock: KT ‖ SGC ‖ TI ‖ KRN ‖ FFFFFF as 16 hex nibbles."""
        return int(f"{self.key_type:d}{self.sgc}{self.ti:02d}{self.krn:d}FFFFFF", 16)


_MASK64: Final = (1 << 64) - 1


def dkga02(vending_key: VendingKey, params: KeyParameters) -> DecoderKey:
    """DKGA02: DES-based decoder key of a 64-bit algorithm (EA07 or EA09)."""
    if vending_key.dkga is not Dkga.DKGA02:
        raise KeyParameterError("DKGA02 needs a DKGA02 (8-byte) vending key")
    if params.ea.key_bytes != 8:
        raise KeyParameterError(f"DKGA02 yields 64-bit keys; EA{params.ea.value} needs 128")
    x = params.meter.pan_block ^ params.control_block
    vk = int.from_bytes(vending_key.secret, "big")
    key = vending_key.des().encrypt(x) ^ x ^ vk
    return DecoderKey(params.ea, (key & _MASK64).to_bytes(8, "big"))


def _item(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes((len(raw),)) + raw


def dkga04_message(params: KeyParameters) -> bytes:
    """The HMAC-SHA-256 input of DKGA04 for ``params`` (layout in the module docstring)."""
    bits = params.ea.key_bytes * 8
    return b"".join(
        (
            b"\x04",
            _item("04"),
            _item(params.base_date.code),
            _item(params.ea.value),
            _item(f"{params.ti:02d}"),
            b"\x00\x04",
            _item(params.sgc),
            _item(f"{params.key_type:d}"),
            _item(f"{params.krn:d}"),
            _item(params.meter.pan),
            bits.to_bytes(4, "big"),
        )
    )


def dkga04(vending_key: VendingKey, params: KeyParameters) -> DecoderKey:
    """DKGA04: HMAC-SHA-256 decoder key for EA07 (first 8 bytes) or EA11 (first 16)."""
    if vending_key.dkga is not Dkga.DKGA04:
        raise KeyParameterError("DKGA04 needs a DKGA04 (20-byte) vending key")
    if params.ea is EncryptionAlgorithm.EA09:
        raise KeyParameterError("DKGA04 keys are for EA07 or EA11, not the deprecated EA09")
    digest = hmac.new(vending_key.secret, dkga04_message(params), hashlib.sha256).digest()
    return DecoderKey(params.ea, digest[: params.ea.key_bytes])


def derive_decoder_key(vending_key: VendingKey, params: KeyParameters) -> DecoderKey:
    """The decoder key for ``params`` by the vending key's own DKGA."""
    if vending_key.dkga is Dkga.DKGA02:
        return dkga02(vending_key, params)
    return dkga04(vending_key, params)
