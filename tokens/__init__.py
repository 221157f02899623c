"""STS prepaid tokens (IEC 62055-41 style): a pure engine for vending and for simulated meters.

Nothing in this package performs I/O, reads a clock or logs: time comes in as ``datetime``
arguments (or an injected clock), randomness from :mod:`secrets` unless injected, and key
material never appears in a ``repr`` or an error message.

Modules, bottom-up: :mod:`~tokens.errors`, :mod:`~tokens.amount` (16-bit amounts),
:mod:`~tokens.crc`, :mod:`~tokens.sta` (EA07), :mod:`~tokens.misty1` (EA11),
:mod:`~tokens.des` (DKGA02, deprecated EA09), :mod:`~tokens.meter_number` (PAN/DRN, Luhn),
:mod:`~tokens.tid`, :mod:`~tokens.keys` (DKGA02/DKGA04), :mod:`~tokens.bitfields`,
:mod:`~tokens.key_sections` and :mod:`~tokens.records` (token kinds),
:mod:`~tokens.codec` (66 bits <-> 20 digits), :mod:`~tokens.vending` (key-change sets),
:mod:`~tokens.decoder` (meter model) and :mod:`~tokens.batch` (the ``sts-token batch`` format).
"""

from tokens.amount import MAX_AMOUNT, decode_amount, encode_amount, tenths_from_units
from tokens.codec import decode, encode, format_token, parse_token
from tokens.decoder import (
    Accepted,
    AcceptResult,
    DecoderState,
    MeterDecoder,
    Rejected,
    RejectReason,
)
from tokens.errors import (
    BadRequestError,
    CrcError,
    InvalidMeterNumberError,
    InvalidTokenError,
    KeyParameterError,
    TidOutOfRangeError,
    TokenError,
    TokenInputError,
    UnsupportedTokenError,
    ValueOutOfRangeError,
)
from tokens.keys import (
    DecoderKey,
    Dkga,
    EncryptionAlgorithm,
    KeyParameters,
    KeyType,
    VendingKey,
    derive_decoder_key,
    dkga02,
    dkga04,
)
from tokens.meter_number import MeterNumber, luhn_check_digit, luhn_valid
from tokens.records import (
    ClearCredit,
    ClearTamperCondition,
    InitiateMeterTestOrDisplay,
    Medium,
    Set1stSectionDecoderKey,
    Set2ndSectionDecoderKey,
    Set3rdSectionDecoderKey,
    Set4thSectionDecoderKey,
    SetMaximumPhasePowerUnbalanceLimit,
    SetMaximumPowerLimit,
    SetTariffRate,
    SetWaterMeterFactor,
    TokenClass,
    TokenRecord,
    TransferCredit,
)
from tokens.tid import BaseDate, TidAllocator, datetime_from_tid, tid_from_datetime
from tokens.vending import key_change_records, key_change_tokens, random_rnd

__all__ = [
    "MAX_AMOUNT",
    "AcceptResult",
    "Accepted",
    "BadRequestError",
    "BaseDate",
    "ClearCredit",
    "ClearTamperCondition",
    "CrcError",
    "DecoderKey",
    "DecoderState",
    "Dkga",
    "EncryptionAlgorithm",
    "InitiateMeterTestOrDisplay",
    "InvalidMeterNumberError",
    "InvalidTokenError",
    "KeyParameterError",
    "KeyParameters",
    "KeyType",
    "Medium",
    "MeterDecoder",
    "MeterNumber",
    "RejectReason",
    "Rejected",
    "Set1stSectionDecoderKey",
    "Set2ndSectionDecoderKey",
    "Set3rdSectionDecoderKey",
    "Set4thSectionDecoderKey",
    "SetMaximumPhasePowerUnbalanceLimit",
    "SetMaximumPowerLimit",
    "SetTariffRate",
    "SetWaterMeterFactor",
    "TidAllocator",
    "TidOutOfRangeError",
    "TokenClass",
    "TokenError",
    "TokenInputError",
    "TokenRecord",
    "TransferCredit",
    "UnsupportedTokenError",
    "ValueOutOfRangeError",
    "VendingKey",
    "datetime_from_tid",
    "decode",
    "decode_amount",
    "derive_decoder_key",
    "dkga02",
    "dkga04",
    "encode",
    "encode_amount",
    "format_token",
    "key_change_records",
    "key_change_tokens",
    "luhn_check_digit",
    "luhn_valid",
    "parse_token",
    "random_rnd",
    "tenths_from_units",
    "tid_from_datetime",
]
