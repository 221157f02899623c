"""Meter events (docs/protocol.md §5): alarms, tamper, relay/valve changes, token results."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from types import MappingProxyType

from protocols.errors import PayloadError
from protocols.jsonbody import check_tree, load_json
from protocols.telemetry import MAX_INSTANTS, MAX_PAYLOAD_BYTES
from protocols.timestamps import parse_device_time, to_rfc3339

__all__ = ["Event", "EventType", "decode_events", "encode_events"]


class EventType(enum.StrEnum):
    TAMPER_COVER_OPEN = "tamper_cover_open"
    TAMPER_COVER_CLOSED = "tamper_cover_closed"
    MAGNETIC_FIELD = "magnetic_field"
    LEAK_DETECTED = "leak_detected"
    BURST_DETECTED = "burst_detected"
    REVERSE_FLOW = "reverse_flow"
    EMPTY_PIPE = "empty_pipe"
    LOW_BATTERY = "low_battery"
    POWER_DOWN = "power_down"
    POWER_UP = "power_up"
    RELAY_OPENED = "relay_opened"
    RELAY_CLOSED = "relay_closed"
    VALVE_OPENED = "valve_opened"
    VALVE_RESTRICTED = "valve_restricted"
    VALVE_CLOSED = "valve_closed"
    CREDIT_LOW = "credit_low"
    CREDIT_EXHAUSTED = "credit_exhausted"
    TOKEN_ACCEPTED = "token_accepted"
    TOKEN_REJECTED = "token_rejected"
    CLOCK_ADJUSTED = "clock_adjusted"
    FIRMWARE_UPDATED = "firmware_updated"


_TYPES = {t.value: t for t in EventType}


@dataclass(frozen=True, slots=True)
class Event:
    ts: datetime
    type: EventType
    details: Mapping[str, str | int | float | None] = field(
        default_factory=lambda: MappingProxyType({})
    )
    raw_ts: str | None = None

    def to_json_obj(self) -> dict[str, object]:
        obj: dict[str, object] = {"ts": to_rfc3339(self.ts), "type": self.type.value}
        if self.details:
            obj["details"] = dict(self.details)
        return obj


def encode_events(events: Sequence[Event]) -> bytes:
    if not events:
        raise PayloadError("bad_shape", "an events message needs at least one event")
    body: object = (
        events[0].to_json_obj() if len(events) == 1 else [e.to_json_obj() for e in events]
    )
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode_events(
    payload: bytes, *, now: datetime | None = None, naive_tz: tzinfo = UTC
) -> list[Event]:
    """Decode and validate an events message (all or nothing).

    ``naive_tz`` is the meter's zone, for times written without an offset.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", f"payload of {len(payload)} bytes exceeds the limit")
    body = load_json(payload)
    items = [body] if isinstance(body, dict) else body
    if not isinstance(items, list) or not items or len(items) > MAX_INSTANTS:
        raise PayloadError("bad_shape", "events must be an object or a non-empty array")
    clock = now if now is not None else datetime.now(UTC)
    events: list[Event] = []
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError("bad_shape", "event is not an object")
        ts, raw = parse_device_time(item.get("ts"), now=clock, naive_tz=naive_tz)
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in _TYPES:
            raise PayloadError("unknown_event", f"unknown event type {str(kind)[:40]!r}")
        details = item.get("details", {})
        if not isinstance(details, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str | int | float))
            for k, v in details.items()
        ):
            raise PayloadError("bad_shape", "event details must map names to scalars")
        check_tree(details, what="event details")
        events.append(Event(ts, _TYPES[kind], MappingProxyType(details), raw))
    return events
