"""What one received MQTT message turns into before it is stored.

A :class:`Work` item is the unit of acknowledgement: the broker gets its PUBACK only after the
database transaction holding everything derived from that message has committed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from protocols.events import Event
from protocols.telemetry import Reading

__all__ = ["DeadLetter", "MeterEvent", "MeterStatus", "Work"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    payload: bytes
    reason: str
    detail: str


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
    readings: list[Reading] = field(default_factory=list)
    events: list[MeterEvent] = field(default_factory=list)
    status: MeterStatus | None = None
    dead: DeadLetter | None = None
    done: asyncio.Future[None] | None = None

    @property
    def rows(self) -> int:
        return len(self.readings) + len(self.events) + 1
