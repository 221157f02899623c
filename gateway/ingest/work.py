"""What one received MQTT message turns into before it is stored.

A :class:`Work` item is the unit of acknowledgement: the broker gets its PUBACK only after the
database transaction holding everything derived from that message has committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from protocols.events import Event
from protocols.telemetry import Reading

__all__ = ["AckToken", "DeadLetter", "MeterEvent", "MeterStatus", "Work"]


@dataclass(frozen=True, slots=True)
class AckToken:
    """How to acknowledge a QoS 1/2 message once committed: its packet id on a connection."""

    connection: int
    """Generation of the broker connection it arrived on; a later connection reuses ids."""
    mid: int
    qos: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    payload: bytes
    """Kept byte for byte (bytea)."""
    reason: str
    detail: str

    def __post_init__(self) -> None:
        # PostgreSQL text cannot hold NUL; the raw bytes are in ``payload`` anyway.
        object.__setattr__(self, "topic", self.topic.replace("\x00", "\\x00")[:1024])
        object.__setattr__(self, "detail", self.detail.replace("\x00", "\\x00")[:2000])


@dataclass(frozen=True, slots=True)
class MeterEvent:
    meter_id: str
    event: Event


@dataclass(frozen=True, slots=True)
class MeterStatus:
    meter_id: str
    online: bool
    document: dict[str, object] | None
    """The status object as the meter sent it (None for a bare ``online``/``offline``)."""


@dataclass(slots=True)
class Work:
    """Everything one message produced, plus the future its acknowledgement waits on."""

    topic: str
    payload: bytes
    kind: str = "other"
    """Topic kind (``telemetry``, ``events`` …) for per-kind message counts."""
    readings: Sequence[Reading] = ()
    events: Sequence[MeterEvent] = ()
    status: MeterStatus | None = None
    dead: DeadLetter | None = None
    ack: AckToken | None = None
    """Set for MQTT QoS 1/2 messages: acknowledged by the intake after commit."""
    done: asyncio.Future[None] | None = None
    """Set for producers that wait on commit (``IngestPipeline.submit``)."""

    @property
    def rows(self) -> int:
        return len(self.readings) + len(self.events) + 1
