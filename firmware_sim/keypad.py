"""The meter's token keypad: STS tokens decoded by ``tokens.MeterDecoder``.

Pure. The decoder (from the tokens engine) decodes under the meter's decoder key and enforces
TID rules (reused or too-old TIDs), key expiry and key changes; this module maps its verdict
onto the meter: a credit token moves its amount into the meter's credit register, ClearCredit
empties it, other management tokens are acknowledged. Every entry produces ``token_accepted``
or ``token_rejected`` (with the decoder's reason code) on the events topic and a status update
(docs/protocol.md §8).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from firmware_sim.control import KeypadEntry, token_rejected
from firmware_sim.identity import MeterIdentity, StsParams, Utility
from firmware_sim.meter import Meter, StepResult
from protocols.events import EventType
from tokens.decoder import Accepted, MeterDecoder
from tokens.records import ClearCredit, Medium, TransferCredit

__all__ = ["Keypad", "medium_of"]

log = logging.getLogger(__name__)


def medium_of(identity: MeterIdentity) -> Medium:
    """The STS medium of a meter's credit register."""
    return Medium.ELECTRICITY if identity.utility is Utility.ELECTRICITY else Medium.WATER


@dataclass(slots=True)
class Keypad:
    sts: StsParams
    medium: Medium
    """The one credit register this meter has: a credit token for another medium is rejected
    (``wrong_medium``), as a real meter does, instead of burning its TID for nothing."""
    decoder: MeterDecoder = field(init=False)

    def __post_init__(self) -> None:
        params = self.sts.params
        self.decoder = MeterDecoder(
            self.sts.decoder_key,
            key_type=params.key_type,
            krn=params.krn,
            ti=params.ti,
            sgc=params.sgc,
            media=(self.medium,),
        )

    def enter(self, meter: Meter, entry: KeypadEntry, now: datetime) -> StepResult:
        verdict = self.decoder.accept(entry.token)
        if not isinstance(verdict, Accepted):
            log.info(
                "token %s rejected: %s",
                entry.request_id,
                verdict.reason.value,
                extra={"meter_id": meter.meter_id},
            )
            result = token_rejected(meter, now, entry.request_id, verdict.reason.value)
            result.status_changed = True
            return result
        record = verdict.token
        result = StepResult(status_changed=True)
        details: dict[str, str | int | float] = {
            "token_id": entry.request_id,
            "token_type": record.name,
        }
        match record:
            case TransferCredit(medium=medium, tenths=tenths):
                # The meter's credit register is authoritative: move the amount across.
                self.decoder.use_credit(medium, tenths)
                result = meter.add_credit(tenths / 10.0, now)
                details["amount"] = tenths / 10.0
            case ClearCredit():
                result = meter.clear_credit(now)
            case _:
                pass
        accepted = meter.event(now, EventType.TOKEN_ACCEPTED, **details)
        result.events.insert(0, accepted)
        result.status_changed = True
        return result
