"""MQTT topic names of the device protocol (docs/protocol.md §2), built and parsed.

Every topic may carry a deployment prefix; :class:`Topics` holds it so that builders and the
parser agree.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from protocols.errors import TopicError, UsageError

__all__ = ["METER_ID_PATTERN", "ParsedTopic", "TopicKind", "Topics", "validate_meter_id"]

METER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TopicKind(enum.StrEnum):
    TELEMETRY = "telemetry"
    EVENTS = "events"
    STATUS = "status"
    COMMANDS = "commands"
    COMMAND_REPLY = "commands/reply"
    KEYPAD = "keypad"
    CONCENTRATOR_TELEMETRY = "concentrator/telemetry"


_METER_SUFFIXES = {
    "telemetry": TopicKind.TELEMETRY,
    "events": TopicKind.EVENTS,
    "status": TopicKind.STATUS,
    "commands": TopicKind.COMMANDS,
    "commands/reply": TopicKind.COMMAND_REPLY,
    "keypad": TopicKind.KEYPAD,
}


def validate_meter_id(meter_id: str) -> str:
    """Return ``meter_id`` if it is a valid protocol identifier (§1), else raise TopicError."""
    if not METER_ID_PATTERN.fullmatch(meter_id):
        raise TopicError(f"invalid meter id {meter_id[:80]!r}: want 1-64 of [A-Za-z0-9_-]")
    return meter_id


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: TopicKind
    device_id: str
    """The meter id, or the concentrator id for ``CONCENTRATOR_TELEMETRY``."""


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder/parser for one deployment prefix (empty, or ending in ``/``)."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            raise UsageError(f"topic prefix must end with '/': {self.prefix!r}")
        if any(c in self.prefix for c in "+#"):
            raise UsageError("topic prefix must not contain MQTT wildcards")

    def _meter(self, meter_id: str, suffix: str) -> str:
        return f"{self.prefix}meters/{validate_meter_id(meter_id)}/{suffix}"

    def telemetry(self, meter_id: str) -> str:
        return self._meter(meter_id, "telemetry")

    def events(self, meter_id: str) -> str:
        return self._meter(meter_id, "events")

    def status(self, meter_id: str) -> str:
        return self._meter(meter_id, "status")

    def commands(self, meter_id: str) -> str:
        return self._meter(meter_id, "commands")

    def command_reply(self, meter_id: str) -> str:
        return self._meter(meter_id, "commands/reply")

    def keypad(self, meter_id: str) -> str:
        return self._meter(meter_id, "keypad")

    def concentrator_telemetry(self, concentrator_id: str) -> str:
        return f"{self.prefix}concentrators/{validate_meter_id(concentrator_id)}/telemetry"

    def filter(self, kind: TopicKind) -> str:
        """Subscription filter matching ``kind`` for every device."""
        if kind is TopicKind.CONCENTRATOR_TELEMETRY:
            return f"{self.prefix}concentrators/+/telemetry"
        return f"{self.prefix}meters/+/{kind.value}"

    def parse(self, topic: str) -> ParsedTopic:
        """Classify an inbound topic; raise TopicError for anything outside the protocol."""
        if not topic.startswith(self.prefix):
            raise TopicError(f"topic {topic[:120]!r} lacks prefix {self.prefix!r}")
        parts = topic[len(self.prefix) :].split("/", 2)
        if len(parts) == 3 and parts[0] == "meters":
            kind = _METER_SUFFIXES.get(parts[2])
            if kind is not None:
                return ParsedTopic(kind, validate_meter_id(parts[1]))
        elif len(parts) == 3 and parts[0] == "concentrators" and parts[2] == "telemetry":
            return ParsedTopic(TopicKind.CONCENTRATOR_TELEMETRY, validate_meter_id(parts[1]))
        raise TopicError(f"topic {topic[:120]!r} is not part of the device protocol")
