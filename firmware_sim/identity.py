"""Who a simulated meter is: numbers, utility, payment mode, STS key parameters, command key.

Identities are derived deterministically from ``(seed, index)`` so that the gateway's registry,
the demo and the tests can rebuild exactly the fleet that a ``firmware-sim run`` starts.

Meter numbers follow STS: an 11-digit DRN (10 serial digits and a Luhn check digit) and the
18-digit PAN ``600727 + DRN + Luhn``. The meter id on the wire (docs/protocol.md §1) is the DRN.
Prepaid meters get KT 2 (unique), SGC 123456, TI 01, KRN 1, base date 2014, EA07, and a
decoder key derived with DKGA02 from the fleet's vending key by ``tokens``; command keys are
``HMAC-SHA-256(command_master_key, "command-key|" + meter_id)`` so the gateway can derive them
from the same master without a key file.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import random
from dataclasses import dataclass
from typing import Final

from protocols.errors import UsageError
from protocols.modbus import WordOrder
from tokens.keys import (
    DecoderKey,
    Dkga,
    EncryptionAlgorithm,
    KeyParameters,
    KeyType,
    VendingKey,
    derive_decoder_key,
)
from tokens.meter_number import MeterNumber, luhn_check_digit
from tokens.tid import BaseDate

__all__ = [
    "DEV_COMMAND_MASTER_KEY",
    "DEV_VENDING_KEY",
    "MeterIdentity",
    "StsParams",
    "Transport",
    "Utility",
    "WordOrder",
    "command_key_for",
    "luhn_digit",
    "make_identity",
]

DEV_VENDING_KEY: Final = bytes.fromhex("abababababababab")
"""Development DKGA02 vending key (the one in the STS development vectors). Never production."""
DEV_COMMAND_MASTER_KEY: Final = hashlib.sha256(b"firmware-sim development command master").digest()
"""Development master for per-meter command keys. Never production."""

IIN: Final = "600727"
STS_SGC: Final = "123456"
STS_TI: Final = 1
STS_KRN: Final = 1


class Utility(enum.StrEnum):
    ELECTRICITY = "electricity"
    WATER = "water"


class Transport(enum.StrEnum):
    MQTT = "mqtt"
    MODBUS = "modbus"


@dataclass(frozen=True, slots=True)
class StsParams:
    """STS key parameters of a prepaid meter (DOMAIN.md §2) and its decoder key."""

    params: KeyParameters
    decoder_key: DecoderKey


@dataclass(frozen=True, slots=True)
class MeterIdentity:
    index: int
    meter_id: str
    """The DRN, used as the protocol meter id."""
    pan: str
    utility: Utility
    prepaid: bool
    transport: Transport
    command_key: bytes
    sts: StsParams | None
    word_order: WordOrder = WordOrder.ABCD
    three_phase: bool = False

    def __post_init__(self) -> None:
        if len(self.command_key) != 32:
            raise UsageError("a command key is 32 bytes")
        if self.prepaid and self.sts is None:
            raise UsageError("a prepaid meter needs STS parameters")

    @property
    def unit(self) -> str:
        return "kWh" if self.utility is Utility.ELECTRICITY else "m3"


def luhn_digit(digits: str) -> str:
    """Luhn check digit for ``digits`` (from the tokens engine)."""
    return str(luhn_check_digit(digits))


def command_key_for(master: bytes, meter_id: str) -> bytes:
    """Per-meter 32-byte command key derived from the fleet's command master key."""
    return hmac.new(master, f"command-key|{meter_id}".encode(), hashlib.sha256).digest()


def make_identity(
    seed: int,
    index: int,
    *,
    transport: Transport,
    vending_key: bytes = DEV_VENDING_KEY,
    command_master: bytes = DEV_COMMAND_MASTER_KEY,
    utility: Utility | None = None,
    prepaid: bool | None = None,
) -> MeterIdentity:
    """The identity of meter ``index`` in the fleet of ``seed`` (pure, deterministic)."""
    rng = random.Random(f"identity|{seed}|{index}")  # noqa: S311 -- simulation, not crypto
    if utility is None:
        utility = Utility.ELECTRICITY if rng.random() < 0.6 else Utility.WATER
    if prepaid is None:
        prepaid = rng.random() < 0.7
    # 10-digit serial: utility digit, fleet block from the seed, then the index.
    serial = f"{1 if utility is Utility.ELECTRICITY else 2}{seed % 100:02d}{index:07d}"
    if len(serial) != 10:
        raise UsageError("meter index must be below 10 000 000")
    drn = serial + luhn_digit(serial)
    pan = IIN + drn + luhn_digit(IIN + drn)
    sts: StsParams | None = None
    if prepaid:
        params = KeyParameters(
            meter=MeterNumber(iin=IIN, drn=drn),
            key_type=KeyType.UNIQUE,
            sgc=STS_SGC,
            ti=STS_TI,
            krn=STS_KRN,
            base_date=BaseDate.Y2014,
            ea=EncryptionAlgorithm.EA07,
        )
        sts = StsParams(params, derive_decoder_key(VendingKey(Dkga.DKGA02, vending_key), params))
    word_order = WordOrder.ABCD
    if transport is Transport.MODBUS:
        word_order = rng.choice(list(WordOrder))
    return MeterIdentity(
        index=index,
        meter_id=drn,
        pan=pan,
        utility=utility,
        prepaid=prepaid,
        transport=transport,
        command_key=command_key_for(command_master, drn),
        sts=sts,
        word_order=word_order,
        three_phase=utility is Utility.ELECTRICITY and rng.random() < 0.3,
    )
