"""Token records <-> 20-digit token numbers (IEC 62055-41 §6.3 - §6.6, DOMAIN.md §2).

Encoding a record::

    crc        = token CRC over class (2) | subclass (4) | body (44)        (tokens.crc)
    data block = subclass (4) | body (44) | crc (16)                         64 bits
    cipher     = encrypt(data block) under the decoder key (class 1: not encrypted)
    transpose  = cipher with bits 28..27 replaced by the class, and the original bits 28..27
                 moved to bits 65..64                                        66 bits
    token      = the 66-bit integer as a zero-padded 20-digit decimal string

Decoding reverses each step and checks the CRC: a wrong decoder key and a mistyped digit both
give :class:`~tokens.errors.CrcError`. Any 20-digit input yields a record or a TokenError.
"""

from __future__ import annotations

from typing import Final

from tokens.crc import token_crc
from tokens.errors import CrcError, InvalidTokenError, KeyParameterError
from tokens.keys import DecoderKey
from tokens.records import TokenClass, TokenRecord, record_from_body

__all__ = [
    "TOKEN_LIMIT",
    "data_block",
    "decode",
    "decode_number",
    "encode",
    "encode_number",
    "format_token",
    "parse_token",
    "split_data_block",
    "transpose",
    "untranspose",
]

TOKEN_LIMIT: Final = 1 << 66
_BODY_MASK: Final = (1 << 44) - 1
_CLASS_BITS: Final = 3 << 27
_MASK64: Final = (1 << 64) - 1
_SEPARATORS: Final = str.maketrans("", "", " -\t")


def data_block(record: TokenRecord) -> int:
    """The 64-bit plaintext block ``subclass | body | crc`` of ``record``."""
    subclass = record.subclass
    body = record.body()
    crc = token_crc(record.token_class << 48 | subclass << 44 | body)
    return subclass << 60 | body << 16 | crc


def split_data_block(block: int) -> tuple[int, int, int]:
    """``(subclass, body, crc)`` of a data block; the CRC is *not* checked here."""
    return block >> 60, block >> 16 & _BODY_MASK, block & 0xFFFF


def transpose(cipher_block: int, token_class: int) -> int:
    """Insert the class into bits 28..27, moving the displaced bits to 65..64."""
    displaced = cipher_block >> 27 & 3
    return (cipher_block & ~_CLASS_BITS) | token_class << 27 | displaced << 64


def untranspose(number: int) -> tuple[int, int]:
    """``(token_class, cipher_block)`` of a 66-bit token number."""
    token_class = number >> 27 & 3
    block = (number & _MASK64 & ~_CLASS_BITS) | (number >> 64) << 27
    return token_class, block


def _require_key(key: DecoderKey | None, token_class: int) -> DecoderKey:
    if key is None:
        raise KeyParameterError(
            f"a class {token_class} token is encrypted: a decoder key is needed",
            code="missing_key",
        )
    return key


def encode_number(record: TokenRecord, key: DecoderKey | None = None) -> int:
    """The 66-bit token number of ``record`` (class 1 needs no key)."""
    token_class = record.token_class
    block = data_block(record)
    if token_class != TokenClass.METER_TEST:
        block = _require_key(key, token_class).cipher.encrypt(block)
    return transpose(block, token_class)


def encode(record: TokenRecord, key: DecoderKey | None = None) -> str:
    """The 20-digit token of ``record`` under ``key`` (class 1 needs no key)."""
    return f"{encode_number(record, key):020d}"


def parse_token(text: str | int) -> int:
    """The 66-bit number of a token typed as 20 digits (spaces and dashes allowed)."""
    if isinstance(text, bool):
        raise InvalidTokenError("a token is 20 decimal digits")
    if isinstance(text, int):
        number = text
    elif isinstance(text, str):
        digits = text.translate(_SEPARATORS)
        if len(digits) != 20 or not digits.isascii() or not digits.isdigit():
            raise InvalidTokenError("a token is 20 decimal digits")
        number = int(digits)
    else:
        raise InvalidTokenError("a token is 20 decimal digits")
    if not 0 <= number < TOKEN_LIMIT:
        raise InvalidTokenError("the token's value is 2**66 or more: not an STS token")
    return number


def decode_number(number: int, key: DecoderKey | None = None) -> TokenRecord:
    """Decode a 66-bit token number (see :func:`decode`)."""
    if not 0 <= number < TOKEN_LIMIT:
        raise InvalidTokenError("the token's value is 2**66 or more: not an STS token")
    token_class, block = untranspose(number)
    if token_class != TokenClass.METER_TEST:
        block = _require_key(key, token_class).cipher.decrypt(block)
    subclass = block >> 60
    body = block >> 16 & _BODY_MASK
    if token_crc(token_class << 48 | subclass << 44 | body) != block & 0xFFFF:
        raise CrcError("CRC check failed: wrong decoder key, or mistyped digits")
    return record_from_body(token_class, subclass, body)


def decode(token: str | int, key: DecoderKey | None = None) -> TokenRecord:
    """Decode a token: 20 digits (or its integer) and the meter's decoder key.

    Raises InvalidTokenError (not a token), KeyParameterError code ``missing_key`` (encrypted
    class without a key), CrcError (wrong key or corrupt digits), UnsupportedTokenError or
    ValueOutOfRangeError (a field outside its valid range).
    """
    return decode_number(parse_token(token), key)


def format_token(token: str | int, separator: str = " ") -> str:
    """Group a token 4-4-4-4-4 for display: ``"2371 6100 5011 8319 4197"``."""
    digits = f"{parse_token(token):020d}"
    return separator.join(digits[i : i + 4] for i in range(0, 20, 4))
