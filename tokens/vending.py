"""Issuing tokens: RND drawing and key-change token sets (IEC 62055-41 §6.3.4, §6.3.7).

A key change is carried by 2 tokens for a 64-bit new key (Set1stSection, Set2ndSection) or 4
tokens for a 128-bit one (1st, 2nd, 3rd, 4th), each encrypted under the meter's **current**
decoder key. The new key is split as::

    64-bit:  NKHO = bytes 0-3,  NKLO = bytes 4-7
    128-bit: NKHO = bytes 0-3,  NKMO2 = bytes 4-7,  NKMO1 = bytes 8-11,  NKLO = bytes 12-15

KEN (key expiry number, 8 bits) is split into KENHO (1st section) and KENLO (2nd); the 24-bit
binary SGC into its low 12 bits (3rd section) and high 12 bits (4th). KT, KRN, TI and SGC
describe the *new* key. :func:`assemble_key_change` is the inverse, used by the meter model.

RND is drawn from :mod:`secrets` unless a source is injected (tests, reproducible batches).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from tokens.codec import encode
from tokens.errors import KeyParameterError
from tokens.keys import DecoderKey, EncryptionAlgorithm, KeyType, normalise_digits
from tokens.records import (
    Set1stSectionDecoderKey,
    Set2ndSectionDecoderKey,
    Set3rdSectionDecoderKey,
    Set4thSectionDecoderKey,
)

__all__ = [
    "KeyChangeSection",
    "NewKey",
    "RndSource",
    "assemble_key_change",
    "key_change_records",
    "key_change_tokens",
    "random_rnd",
]

RndSource = Callable[[], int]
"""A callable returning an RND value 0..15."""

KeyChangeSection = (
    Set1stSectionDecoderKey
    | Set2ndSectionDecoderKey
    | Set3rdSectionDecoderKey
    | Set4thSectionDecoderKey
)


def random_rnd() -> int:
    """A random 4-bit RND from the operating system's CSPRNG."""
    return secrets.randbelow(16)


def _check_ken_ro(ken: int, ro: int) -> None:
    if isinstance(ken, bool) or not isinstance(ken, int) or not 0 <= ken <= 255:
        raise KeyParameterError("KEN must be an integer 0..255")
    if isinstance(ro, bool) or ro not in (0, 1):
        raise KeyParameterError("RO must be 0 or 1")


def key_change_records(
    new_key: DecoderKey,
    *,
    key_type: KeyType | int,
    krn: int,
    ti: int,
    sgc: str | int | None,
    ken: int,
    ro: int,
) -> tuple[KeyChangeSection, ...]:
    """The 2 or 4 key-change records, in section order, for ``new_key`` and its parameters.

    ``sgc`` is needed (and carried) only for 128-bit keys.
    """
    _check_ken_ro(ken, ro)
    kt = int(normalise_digits(key_type, 1, "key type (KT)", hi=3))
    krn_value = int(normalise_digits(krn, 1, "key revision (KRN)", lo=1))
    ti_value = int(normalise_digits(ti, 2, "tariff index (TI)"))
    key = new_key.key
    words = [int.from_bytes(key[i : i + 4], "big") for i in range(0, len(key), 4)]
    first = Set1stSectionDecoderKey(
        ken_high=ken >> 4, krn=krn_value, ro=ro, key_type=kt, nk_high=words[0]
    )
    second = Set2ndSectionDecoderKey(ken_low=ken & 15, ti=ti_value, nk_low=words[-1])
    if len(words) == 2:
        return first, second
    if sgc is None:
        raise KeyParameterError("a 128-bit key change carries the SGC: it is required")
    sgc_value = int(normalise_digits(sgc, 6, "supply group code (SGC)", exact_text=True))
    third = Set3rdSectionDecoderKey(sgc_low=sgc_value & 0xFFF, nk_mid2=words[1])
    fourth = Set4thSectionDecoderKey(sgc_high=sgc_value >> 12, nk_mid1=words[2])
    return first, second, third, fourth


def key_change_tokens(
    current_key: DecoderKey,
    new_key: DecoderKey,
    *,
    key_type: KeyType | int,
    krn: int,
    ti: int,
    sgc: str | int | None,
    ken: int,
    ro: int,
) -> tuple[str, ...]:
    """The key-change tokens (20 digits each, in section order) under ``current_key``."""
    records = key_change_records(
        new_key, key_type=key_type, krn=krn, ti=ti, sgc=sgc, ken=ken, ro=ro
    )
    return tuple(encode(record, current_key) for record in records)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A decoder key assembled from its key-change sections, with what they carried."""

    key: DecoderKey
    key_type: KeyType
    krn: int
    ti: int
    ken: int
    ro: int
    sgc: str | None


def assemble_key_change(
    ea: EncryptionAlgorithm, sections: dict[int, KeyChangeSection]
) -> NewKey | None:
    """The new key once every section ``ea`` needs is in ``sections`` (by subclass), else None.

    The new key keeps the algorithm ``ea`` of the key it replaces.
    """
    needed = (3, 4) if ea.key_change_sections == 2 else (3, 4, 8, 9)
    if any(sub not in sections for sub in needed):
        return None
    first = sections[3]
    second = sections[4]
    assert isinstance(first, Set1stSectionDecoderKey)
    assert isinstance(second, Set2ndSectionDecoderKey)
    sgc: str | None = None
    if len(needed) == 2:
        words = [first.nk_high, second.nk_low]
    else:
        third = sections[8]
        fourth = sections[9]
        assert isinstance(third, Set3rdSectionDecoderKey)
        assert isinstance(fourth, Set4thSectionDecoderKey)
        words = [first.nk_high, third.nk_mid2, fourth.nk_mid1, second.nk_low]
        sgc_value = fourth.sgc_high << 12 | third.sgc_low
        if sgc_value > 999_999:
            raise KeyParameterError(f"key change carries SGC {sgc_value}: more than 6 digits")
        sgc = f"{sgc_value:06d}"
    key = b"".join(word.to_bytes(4, "big") for word in words)
    return NewKey(
        key=DecoderKey(ea, key),
        key_type=KeyType(first.key_type),
        krn=first.krn,
        ti=second.ti,
        ken=first.ken_high << 4 | second.ken_low,
        ro=first.ro,
        sgc=sgc,
    )
