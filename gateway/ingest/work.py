"""What one received MQTT message turns into before it is stored.

A :class:`Work` item is the unit of acknowledgement: the broker gets its PUBACK only after the
database transaction holding everything derived from that message has committed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from protocols.commands import CommandReply
from protocols.events import Event
from protocols.telemetry import Reading

__all__ = [
    "DEAD_LETTER_KEEP_BYTES",
    "AckToken",
    "DeadLetter",
    "MeterEvent",
    "MeterReply",
    "MeterStatus",
    "Work",
    "storable_text",
]

DEAD_LETTER_KEEP_BYTES: Final = 64 * 1024
"""How much of a dead-lettered payload is kept (the rest is described by length and hash)."""


@dataclass(frozen=True, slots=True)
class AckToken:
    """How to acknowledge a QoS 1/2 message once committed: its packet id on a connection."""

    connection: int
    """Generation of the broker connection it arrived on; a later connection reuses ids."""
    mid: int
    qos: int


def storable_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, in a form PostgreSQL ``text`` accepts.

    NUL and lone surrogates (which UTF-8 cannot encode) become backslash escapes.
    """
    text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that cannot be stored as data, kept with its reason.

    The payload is kept byte for byte up to :data:`DEAD_LETTER_KEEP_BYTES`; ``length`` and
    ``sha256`` always describe the whole message, so an oversized one is still identified.
    """

    topic: str
    payload: bytes
    reason: str
    detail: str
    length: int = field(init=False)
    """Size of the message as received."""
    sha256: bytes = field(init=False)
    """SHA-256 of the whole payload; with the topic, the key that stores a redelivery once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "length", len(self.payload))
        object.__setattr__(self, "sha256", hashlib.sha256(self.payload).digest())
        object.__setattr__(self, "payload", self.payload[:DEAD_LETTER_KEEP_BYTES])
        object.__setattr__(self, "topic", storable_text(self.topic, 1024))
        object.__setattr__(self, "detail", storable_text(self.detail, 2000))


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


@dataclass(frozen=True, slots=True)
class MeterReply:
    """A meter's reply to a command (docs/protocol.md §7)."""

    meter_id: str
    reply: CommandReply


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
    reply: MeterReply | None = None
    dead: DeadLetter | None = None
    ack: AckToken | None = None
    """Set for MQTT QoS 1/2 messages: acknowledged by the intake after commit."""
    done: asyncio.Future[None] | None = None
    """Set for producers that wait on commit (``IngestPipeline.submit``)."""

    @property
    def rows(self) -> int:
        return len(self.readings) + len(self.events) + 1
