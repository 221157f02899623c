"""What a meter sends, and when: batching of interval readings and transport faults.

Pure: :class:`Transmitter` turns a meter's :class:`~firmware_sim.meter.StepResult` into a list
of :class:`Outgoing` messages (topic kind + encoded body) for the shell to publish, applying the
transport faults that are active on the meter: comms loss (hold everything, deliver the backlog
on reconnection), duplicate delivery, out-of-order delivery and malformed payloads.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from firmware_sim.faults import Fault, FaultKind
from firmware_sim.meter import StepResult
from protocols.binary import BinaryRow, encode_frame
from protocols.events import Event, encode_events
from protocols.status import Status, encode_status
from protocols.telemetry import MAX_INSTANTS, Instant, encode_json
from protocols.timestamps import to_rfc3339
from protocols.topics import TopicKind

__all__ = ["MALFORMED_VARIANTS", "Outgoing", "PayloadFormat", "Transmitter", "encode_readings"]

MALFORMED_VARIANTS = (
    "bad_json",
    "unknown_channel",
    "string_value",
    "missing_timestamp",
    "out_of_range",
)
BACKLOG_BATCH = 96
"""Readings per message when a meter delivers its backlog after a comms loss."""


class PayloadFormat(enum.StrEnum):
    JSON = "json"
    BINARY = "binary"


@dataclass(frozen=True, slots=True)
class Outgoing:
    kind: TopicKind
    meter_id: str
    payload: bytes
    retain: bool = False


def encode_readings(instants: Sequence[Instant], fmt: PayloadFormat) -> bytes:
    """Encode a batch of readings of one meter, JSON (§3) or a per-meter binary frame (§4)."""
    if fmt is PayloadFormat.JSON:
        return encode_json(instants)
    channels = sorted({name for inst in instants for name in inst.values})
    base_ms = int(instants[0].ts.timestamp() * 1000)
    rows = [
        BinaryRow(
            int(inst.ts.timestamp() * 1000) - base_ms,
            [inst.values.get(name, math.nan) for name in channels],
        )
        for inst in instants
    ]
    return encode_frame(base_ms, channels, rows)


def malformed_body(variant: str, sample: Instant) -> bytes:
    """A telemetry body the gateway must dead-letter with the reason named by ``variant``."""
    ts = to_rfc3339(sample.ts)
    match variant:
        case "bad_json":
            return f'{{"ts": "{ts}", "values": {{"1.8.0": 1.0'.encode()
        case "unknown_channel":
            body: object = {"ts": ts, "values": {"99.99.99": 1.0}}
        case "string_value":
            name = next(iter(sample.values))
            body = {"ts": ts, "values": {name: str(sample.values[name])}}
        case "missing_timestamp":
            body = {"values": dict(sample.values)}
        case _:
            body = {"ts": ts, "values": {"14.7.0": 1000.0}}
    return json.dumps(body).encode()


@dataclass(slots=True)
class Transmitter:
    """Per-meter sending policy."""

    meter_id: str
    batch: int = 1
    """Interval readings per telemetry message."""
    fmt: PayloadFormat = PayloadFormat.JSON
    pending: list[Instant] = field(default_factory=list)
    held_events: list[Event] = field(default_factory=list)
    status_due: Status | None = None
    reorder: list[Outgoing] = field(default_factory=list)
    malformed_count: int = 0
    backlog: bool = False
    """Readings were held back by a comms loss and go out in large batches."""

    def __post_init__(self) -> None:
        self.batch = max(1, min(self.batch, MAX_INSTANTS))

    def push(
        self,
        result: StepResult,
        status: Status | None,
        active: Mapping[FaultKind, Fault],
        *,
        force: bool = False,
    ) -> list[Outgoing]:
        """Messages to publish now for ``result``; ``status`` if the status must be (re)sent.

        ``force`` sends partial batches (shutdown, or a test that wants everything out).
        """
        self.pending.extend(result.readings)
        self.held_events.extend(result.events)
        if status is not None:
            self.status_due = status
        loss = active.get(FaultKind.COMMS_LOSS)
        if loss is not None:
            if loss.number("backlog", 1.0) == 0:
                # The meter's buffer overflowed: readings from the outage are lost for good.
                self.pending = [r for r in self.pending if r.ts < loss.start]
            self.backlog = True
            return []
        out: list[Outgoing] = []
        size = max(self.batch, BACKLOG_BATCH) if self.backlog else self.batch
        self.backlog = False
        telemetry: list[Outgoing] = []
        while self.pending and (len(self.pending) >= self.batch or force):
            chunk, self.pending = self.pending[:size], self.pending[size:]
            telemetry.append(
                Outgoing(TopicKind.TELEMETRY, self.meter_id, encode_readings(chunk, self.fmt))
            )
            malformed = active.get(FaultKind.MALFORMED_PAYLOAD)
            if malformed is not None:
                variant = str(malformed.params.get("variant", ""))
                if variant not in MALFORMED_VARIANTS:
                    variant = MALFORMED_VARIANTS[self.malformed_count % len(MALFORMED_VARIANTS)]
                self.malformed_count += 1
                telemetry.append(
                    Outgoing(TopicKind.TELEMETRY, self.meter_id, malformed_body(variant, chunk[0]))
                )
        duplicate = active.get(FaultKind.DUPLICATE)
        if duplicate is not None:
            copies = max(1, int(duplicate.number("copies", 2)))
            telemetry = [msg for msg in telemetry for _ in range(copies)]
        reorder = active.get(FaultKind.OUT_OF_ORDER)
        if reorder is not None:
            window = max(2, int(reorder.number("window", 4)))
            self.reorder.extend(telemetry)
            telemetry = []
            while len(self.reorder) >= window:
                telemetry.extend(reversed(self.reorder[:window]))
                self.reorder = self.reorder[window:]
        if self.reorder and (reorder is None or force):
            telemetry.extend(reversed(self.reorder))
            self.reorder = []
        out.extend(telemetry)
        if self.held_events:
            for start in range(0, len(self.held_events), MAX_INSTANTS):
                chunk_events = self.held_events[start : start + MAX_INSTANTS]
                out.append(Outgoing(TopicKind.EVENTS, self.meter_id, encode_events(chunk_events)))
            self.held_events = []
        if self.status_due is not None:
            out.append(
                Outgoing(TopicKind.STATUS, self.meter_id, encode_status(self.status_due), True)
            )
            self.status_due = None
        return out

    def reply(self, body: bytes) -> Outgoing:
        return Outgoing(TopicKind.COMMAND_REPLY, self.meter_id, body)


def offline_status(now: datetime) -> bytes:
    """Retained status published on clean shutdown (the will covers crashes)."""
    return encode_status(Status(online=False, ts=now))
