"""Turns one inbound MQTT message into a :class:`Work` item (pure apart from the clock).

Every message produces work: decoded readings, events or status, or, when it breaks the device
protocol, a dead letter with the reason. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gateway.ingest.work import DeadLetter, MeterEvent, MeterStatus, Work
from protocols.binary import decode_frame, is_binary
from protocols.errors import PayloadError, TopicError
from protocols.events import decode_events
from protocols.status import decode_status
from protocols.telemetry import decode_json_telemetry
from protocols.topics import TopicKind, Topics

__all__ = ["decode_message"]


def decode_message(
    topics: Topics, topic: str, payload: bytes, *, now: datetime | None = None
) -> Work:
    """Decode ``payload`` received on ``topic``; never raises for bad input."""
    work = Work(topic=topic, payload=payload)
    clock = now if now is not None else datetime.now(UTC)
    try:
        parsed = topics.parse(topic)
        work.kind = parsed.kind.value
        match parsed.kind:
            case TopicKind.TELEMETRY:
                if is_binary(payload):
                    work.readings = decode_frame(payload, meter_id=parsed.device_id, now=clock)
                else:
                    work.readings = decode_json_telemetry(
                        payload, meter_id=parsed.device_id, now=clock
                    )
            case TopicKind.CONCENTRATOR_TELEMETRY:
                if not is_binary(payload):
                    raise PayloadError("bad_frame", "concentrator telemetry must be a binary frame")
                work.readings = decode_frame(payload, meter_id=None, now=clock)
            case TopicKind.EVENTS:
                work.events = [
                    MeterEvent(parsed.device_id, e) for e in decode_events(payload, now=clock)
                ]
            case TopicKind.STATUS:
                status = decode_status(payload)
                document = json.loads(payload) if payload.lstrip()[:1] == b"{" else None
                work.status = MeterStatus(parsed.device_id, status.online, document)
            case _:
                raise TopicError(f"gateway does not consume {parsed.kind.value} topics")
    except PayloadError as exc:
        work.dead = DeadLetter(topic, payload, exc.reason, str(exc))
    except TopicError as exc:
        work.dead = DeadLetter(topic, payload, "bad_topic", str(exc))
    return work
