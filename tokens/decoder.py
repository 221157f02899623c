"""A meter-side token decoder model (IEC 62055-41 §6.7 token acceptance; DOMAIN.md §2 "TID").

Used by ``firmware_sim/`` and by tests. :class:`MeterDecoder` holds the state of one meter's
token processor: decoder key and its parameters (KT, KRN, TI, SGC, KEN), credit registers per
medium (tenths), maximum power limit, phase unbalance limit, tariff rate, water meter factor,
tamper flag, the remembered TIDs and any key-change sections received so far. It is pure:
``accept(digits)`` changes the state and returns :class:`Accepted` or :class:`Rejected` with a
:class:`RejectReason`, nothing else.

Acceptance rules implemented:

* the token must decode under the current key with a valid CRC (class 1 needs no key);
* a TID already remembered is rejected (``tid_reused``), and so is a TID older than the oldest
  remembered one (``tid_too_old``); the memory keeps the ``tid_memory`` most recent TIDs;
* a TID above the key's expiry (``TID >> 16 > KEN``) is rejected (``key_expired``);
* key-change sections (no TID) are collected; the new key, KT, KRN, TI, KEN (and SGC for
  128-bit keys) take effect only when every section has arrived (2 for EA07/EA09, 4 for EA11).
  With RO = 1 (rollover to a new base date) the TID memory is cleared, since TIDs under the new
  base date restart from small values.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar, Final

from protocols.errors import UsageError
from tokens.codec import decode
from tokens.errors import (
    CrcError,
    InvalidTokenError,
    KeyParameterError,
    TokenError,
    UnsupportedTokenError,
    ValueOutOfRangeError,
)
from tokens.keys import DecoderKey, KeyType
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
    TokenRecord,
    TransferCredit,
)
from tokens.vending import KeyChangeSection, assemble_key_change

__all__ = ["AcceptResult", "Accepted", "DecoderState", "MeterDecoder", "RejectReason", "Rejected"]

DEFAULT_TID_MEMORY: Final = 50


class RejectReason(StrEnum):
    """Why a meter refused a token."""

    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a reason code, not a credential
    """Not 20 digits, or not below 2**66."""
    CRC_MISMATCH = "crc_mismatch"
    """Not for this meter's key, or mistyped."""
    UNSUPPORTED = "unsupported_token"
    """A class/subclass this meter does not implement."""
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    """A field the meter cannot apply (unknown register, bad key-change parameter...)."""
    WRONG_MEDIUM = "wrong_medium"
    """Credit for a medium this meter does not measure."""
    TID_REUSED = "tid_reused"
    """This TID was already accepted."""
    TID_TOO_OLD = "tid_too_old"
    """Older than the oldest TID the meter remembers."""
    KEY_EXPIRED = "key_expired"
    """The TID is past the decoder key's expiry number (KEN)."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The token was applied. ``key_changed`` is True on the section completing a key change."""

    token: TokenRecord
    key_changed: bool = False
    accepted: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Rejected:
    """The token was refused; the meter state is unchanged."""

    reason: RejectReason
    message: str
    accepted: ClassVar[bool] = False


AcceptResult = Accepted | Rejected


@dataclass(frozen=True, slots=True)
class DecoderState:
    """A snapshot of the decoder's state (the key itself is not included)."""

    credit: MappingProxyType[Medium, int]
    max_power_limit: int | None
    phase_unbalance_limit: int | None
    tariff_rate: int | None
    water_meter_factor: int | None
    tamper: bool
    key_type: KeyType
    krn: int
    ti: int
    ken: int
    sgc: str | None
    remembered_tids: tuple[int, ...]
    pending_sections: tuple[int, ...]


_ERROR_REASONS: Final = (
    (CrcError, RejectReason.CRC_MISMATCH),
    (InvalidTokenError, RejectReason.INVALID_TOKEN),
    (UnsupportedTokenError, RejectReason.UNSUPPORTED),
)


class MeterDecoder:
    """The token-acceptance state machine of one meter."""

    def __init__(
        self,
        key: DecoderKey,
        *,
        key_type: KeyType = KeyType.UNIQUE,
        krn: int = 1,
        ti: int = 0,
        sgc: str | None = None,
        ken: int = 255,
        tid_memory: int = DEFAULT_TID_MEMORY,
        media: Iterable[Medium] = tuple(Medium),
        remembered_tids: Iterable[int] = (),
    ) -> None:
        if tid_memory < 1:
            raise UsageError("tid_memory must be at least 1")
        self._key = key
        self.key_type = KeyType(key_type)
        self.krn = krn
        self.ti = ti
        self.sgc = sgc
        self.ken = ken
        self._tid_memory = tid_memory
        self._media = frozenset(media)
        self._credit: dict[Medium, int] = dict.fromkeys(self._media, 0)
        self.max_power_limit: int | None = None
        self.phase_unbalance_limit: int | None = None
        self.tariff_rate: int | None = None
        self.water_meter_factor: int | None = None
        self.tamper = False
        self._tids: list[int] = sorted(set(remembered_tids))[-tid_memory:]
        self._sections: dict[int, KeyChangeSection] = {}

    def __repr__(self) -> str:
        return f"MeterDecoder({self._key!r}, krn={self.krn}, ti={self.ti})"

    @property
    def key(self) -> DecoderKey:
        """The decoder key currently in force."""
        return self._key

    def credit(self, medium: Medium) -> int:
        """Credit available for ``medium``, in tenths."""
        return self._credit.get(medium, 0)

    def use_credit(self, medium: Medium, tenths: int) -> int:
        """Consume up to ``tenths`` of credit; return what was actually consumed."""
        available = self._credit.get(medium, 0)
        used = min(available, max(0, tenths))
        if medium in self._credit:
            self._credit[medium] = available - used
        return used

    def set_tamper(self) -> None:
        """Record a tamper condition (cleared by a ClearTamperCondition token)."""
        self.tamper = True

    def state(self) -> DecoderState:
        """A frozen snapshot of everything but the key bytes."""
        return DecoderState(
            credit=MappingProxyType(dict(self._credit)),
            max_power_limit=self.max_power_limit,
            phase_unbalance_limit=self.phase_unbalance_limit,
            tariff_rate=self.tariff_rate,
            water_meter_factor=self.water_meter_factor,
            tamper=self.tamper,
            key_type=self.key_type,
            krn=self.krn,
            ti=self.ti,
            ken=self.ken,
            sgc=self.sgc,
            remembered_tids=tuple(self._tids),
            pending_sections=tuple(sorted(self._sections)),
        )

    def accept(self, token: str) -> AcceptResult:
        """Decode ``token`` under the current key and apply it, or say why not."""
        try:
            record = decode(token, self._key)
        except TokenError as exc:
            for error_type, reason in _ERROR_REASONS:
                if isinstance(exc, error_type):
                    return Rejected(reason, exc.message)
            return Rejected(RejectReason.VALUE_OUT_OF_RANGE, exc.message)
        return self._apply(record)

    def _check_tid(self, tid: int) -> Rejected | None:
        tids = self._tids
        if tid in tids:
            return Rejected(RejectReason.TID_REUSED, f"TID {tid} was already accepted")
        if tids and tid < tids[0]:
            return Rejected(
                RejectReason.TID_TOO_OLD, f"TID {tid} is older than the oldest remembered"
            )
        if tid >> 16 > self.ken:
            return Rejected(RejectReason.KEY_EXPIRED, f"TID {tid} is past key expiry {self.ken}")
        return None

    def _remember(self, tid: int) -> None:
        insort(self._tids, tid)
        if len(self._tids) > self._tid_memory:
            del self._tids[0]

    def _apply(self, record: TokenRecord) -> AcceptResult:
        match record:
            case InitiateMeterTestOrDisplay():
                return Accepted(record)
            case (
                Set1stSectionDecoderKey()
                | Set2ndSectionDecoderKey()
                | Set3rdSectionDecoderKey()
                | Set4thSectionDecoderKey()
            ):
                return self._key_section(record)
        rejected = self._check_tid(record.tid)
        if rejected is not None:
            return rejected
        match record:
            case TransferCredit(medium=medium, tenths=tenths):
                if medium not in self._media:
                    return Rejected(
                        RejectReason.WRONG_MEDIUM, f"this meter does not measure {medium.name}"
                    )
                self._credit[medium] += tenths
            case ClearCredit(register=register):
                if register == ClearCredit.ALL_REGISTERS:
                    for medium in self._credit:
                        self._credit[medium] = 0
                elif register <= 3 and Medium(register) in self._credit:
                    self._credit[Medium(register)] = 0
                else:
                    return Rejected(
                        RejectReason.VALUE_OUT_OF_RANGE, f"no credit register {register}"
                    )
            case SetMaximumPowerLimit(watts=watts):
                self.max_power_limit = watts
            case SetMaximumPhasePowerUnbalanceLimit(watts=watts):
                self.phase_unbalance_limit = watts
            case SetTariffRate(rate=rate):
                self.tariff_rate = rate
            case SetWaterMeterFactor(factor=factor):
                self.water_meter_factor = factor
            case ClearTamperCondition():
                self.tamper = False
        self._remember(record.tid)
        return Accepted(record)

    def _key_section(self, record: KeyChangeSection) -> AcceptResult:
        if self._key.ea.key_change_sections == 2 and record.subclass in (8, 9):
            return Rejected(
                RejectReason.UNSUPPORTED,
                f"{record.name} is for 128-bit keys; this meter uses EA{self._key.ea.value}",
            )
        self._sections[record.subclass] = record
        try:
            new = assemble_key_change(self._key.ea, self._sections)
        except (KeyParameterError, ValueOutOfRangeError) as exc:
            del self._sections[record.subclass]
            return Rejected(RejectReason.VALUE_OUT_OF_RANGE, exc.message)
        if new is None:
            return Accepted(record)
        self._sections.clear()
        self._key = new.key
        self.key_type = new.key_type
        self.krn = new.krn
        self.ti = new.ti
        self.ken = new.ken
        if new.sgc is not None:
            self.sgc = new.sgc
        if new.ro:
            self._tids.clear()
        return Accepted(record, key_changed=True)
