"""A complete simulated device: meter model + transmitter + command memory + keypad decoder.

Pure glue between the meter state machine and the wire: every method takes the true simulated
time and returns the messages to publish and the ground-truth records to write. The MQTT and
Modbus shells call nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from firmware_sim.control import CommandMemory, handle_command, parse_keypad, token_rejected
from firmware_sim.faults import FaultKind, FaultRecord
from firmware_sim.keypad import Keypad
from firmware_sim.meter import Meter, StepResult
from firmware_sim.transmit import Outgoing, Transmitter
from protocols.errors import PayloadError

__all__ = ["Device", "Output"]


@dataclass(slots=True)
class Output:
    messages: list[Outgoing] = field(default_factory=list)
    records: list[FaultRecord] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.messages.extend(other.messages)
        self.records.extend(other.records)


@dataclass(slots=True)
class Device:
    meter: Meter
    transmitter: Transmitter
    keypad: Keypad | None = None
    memory: CommandMemory = field(default_factory=CommandMemory)

    @property
    def meter_id(self) -> str:
        return self.meter.meter_id

    def _emit(self, result: StepResult, now: datetime, *, force: bool = False) -> Output:
        status = self.meter.status(now) if result.status_changed else None
        messages = self.transmitter.push(result, status, self.meter.active, force=force)
        return Output(messages, result.records)

    def online(self, now: datetime) -> Output:
        """Messages right after (re)connecting: the retained online status."""
        return self._emit(StepResult(status_changed=True), now)

    def advance(self, now: datetime) -> Output:
        return self._emit(self.meter.step(now), now)

    def flush(self, now: datetime) -> Output:
        """Send partial batches now (shutdown, or tests)."""
        return self._emit(self.meter.step(now), now, force=True)

    def finish(self, now: datetime) -> Output:
        out = self.flush(now)
        out.records.extend(self.meter.finish(now))
        return out

    def provision_command_key(self, key: bytes) -> None:
        """Load the command key the gateway generated for this meter (its provisioning file)."""
        if key != self.meter.identity.command_key:
            self.meter.identity = replace(self.meter.identity, command_key=key)

    def on_command(self, payload: bytes, now: datetime) -> Output:
        scheduled = (*self.meter.active.values(), *self.meter.pending)
        if any(f.kind is FaultKind.IGNORE_COMMANDS and f.start <= now < f.end for f in scheduled):
            return Output()  # a deaf control unit: not carried out, not answered
        reply, result = handle_command(self.meter, self.memory, payload, now)
        out = self._emit(result, now)
        out.messages.insert(0, self.transmitter.reply(reply.to_json()))
        return out

    def on_keypad(self, payload: bytes, now: datetime) -> Output:
        try:
            entry = parse_keypad(payload)
        except PayloadError as exc:
            return self._emit(token_rejected(self.meter, now, "", exc.reason), now)
        if self.keypad is None:
            return self._emit(token_rejected(self.meter, now, entry.request_id, "no_keypad"), now)
        result = self.keypad.enter(self.meter, entry, now)
        return self._emit(result, now)

    def press_button(self, now: datetime) -> Output:
        return self._emit(self.meter.press_button(now), now)
