"""Turns one inbound MQTT message into a :class:`Work` item (pure apart from the clock).

Every message produces work: decoded readings, events, status or a command reply, or, when it
breaks the device protocol, a dead letter with the reason. Decoding is total: an exception that
is not a protocol error (a defect of ours, or of a library, met by some input) also makes a
dead letter, with reason ``internal_error`` and the exception's type, so that the message is
stored and acknowledged instead of coming back on every reconnect. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from gateway.ingest.work import DeadLetter, MeterEvent, MeterReply, MeterStatus, Work
from protocols.binary import decode_frame, is_binary
from protocols.commands import decode_reply
from protocols.errors import PayloadError, TopicError
from protocols.events import decode_events
from protocols.status import decode_status
from protocols.telemetry import decode_json_telemetry
from protocols.topics import TopicKind, Topics

__all__ = ["INTERNAL_ERROR", "MessageDecoder", "ZoneLookup", "decode_message"]

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"
"""Dead-letter reason of a message whose decoding raised an unexpected exception."""

ZoneLookup = Callable[[str], tzinfo]
"""meter id → the zone its offset-less device times are read in."""


def _utc(meter_id: str) -> tzinfo:
    del meter_id
    return UTC


def decode_message(
    topics: Topics,
    topic: str,
    payload: bytes,
    *,
    now: datetime | None = None,
    zone_of: ZoneLookup = _utc,
) -> Work:
    """Decode ``payload`` received on ``topic``; raises only for protocol-independent defects.

    :class:`MessageDecoder` is the total form used by the intake.
    """
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
                        payload,
                        meter_id=parsed.device_id,
                        now=clock,
                        naive_tz=zone_of(parsed.device_id),
                    )
            case TopicKind.CONCENTRATOR_TELEMETRY:
                if not is_binary(payload):
                    raise PayloadError("bad_frame", "concentrator telemetry must be a binary frame")
                work.readings = decode_frame(payload, meter_id=None, now=clock)
            case TopicKind.EVENTS:
                events = decode_events(payload, now=clock, naive_tz=zone_of(parsed.device_id))
                work.events = [MeterEvent(parsed.device_id, e) for e in events]
            case TopicKind.STATUS:
                status = decode_status(payload, now=clock, naive_tz=zone_of(parsed.device_id))
                document = dict(status.document) if status.document is not None else None
                work.status = MeterStatus(parsed.device_id, status.online, document)
            case TopicKind.COMMAND_REPLY:
                work.reply = MeterReply(parsed.device_id, decode_reply(payload))
            case _:
                raise TopicError(f"gateway does not consume {parsed.kind.value} topics")
    except PayloadError as exc:
        work.dead = DeadLetter(topic, payload, exc.reason, str(exc))
    except TopicError as exc:
        work.dead = DeadLetter(topic, payload, "bad_topic", str(exc))
    return work


class MessageDecoder:
    """Total decoding for the intake: any exception becomes an ``internal_error`` dead letter.

    Each kind of unexpected exception (its type, and the topic kind it met) is logged once with
    its traceback, then only counted (``on_internal_error``), so that a hostile or broken device
    cannot flood the log while the defect stays visible.
    """

    MAX_LOGGED = 1000

    def __init__(
        self,
        topics: Topics,
        *,
        zone_of: ZoneLookup = _utc,
        on_internal_error: Callable[[str], object] | None = None,
    ) -> None:
        self._topics = topics
        self._zone_of = zone_of
        self._on_internal_error = on_internal_error
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, topic: str, payload: bytes, *, now: datetime | None = None) -> Work:
        try:
            return decode_message(self._topics, topic, payload, now=now, zone_of=self._zone_of)
        except Exception as exc:  # total by design: the message is kept
            return self._internal_error(topic, payload, exc)

    def _internal_error(self, topic: str, payload: bytes, exc: Exception) -> Work:
        kind = type(exc).__name__
        try:
            topic_kind = self._topics.parse(topic).kind.value
        except Exception:  # the topic itself may be what failed
            topic_kind = "other"
        if self._on_internal_error is not None:
            self._on_internal_error(kind)
        key = (kind, topic_kind)
        if key not in self._logged and len(self._logged) < self.MAX_LOGGED:
            self._logged.add(key)
            log.error(
                "decoding a %s message raised %s; dead-lettered as %s (logged once per kind)",
                topic_kind,
                kind,
                INTERNAL_ERROR,
                exc_info=exc,
                extra={"topic": topic[:200], "exception": kind},
            )
        work = Work(topic=topic, payload=payload, kind=topic_kind)
        work.dead = DeadLetter(topic, payload, INTERNAL_ERROR, f"{kind}: {str(exc)[:300]}")
        return work
