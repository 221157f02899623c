"""Meter-side handling of signed commands (docs/protocol.md §7) and keypad tokens (§8).

Pure: takes the received body and the true simulated time, returns what the meter publishes.
Commands are verified with :func:`protocols.commands.check_command` against the meter's own
clock and its memory of ids and nonces seen within their expiry windows; anything malformed
(an ``id`` or ``nonce`` outside ``[A-Za-z0-9_-]`` included, whose ``|`` could re-split the
signed text), forged, stale or replayed is answered ``rejected`` with the reason and changes
nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from firmware_sim.meter import Meter, Relay, StepResult, Valve
from protocols.commands import (
    TOKEN_PATTERN,
    Command,
    CommandAction,
    CommandReply,
    RejectReason,
    check_command,
    decode_command,
)
from protocols.errors import PayloadError
from protocols.events import EventType

__all__ = ["CommandMemory", "KeypadEntry", "handle_command", "parse_keypad"]

log = logging.getLogger(__name__)

_ELECTRIC_ACTIONS = {
    CommandAction.DISCONNECT: Relay.DISCONNECTED,
    CommandAction.RECONNECT: Relay.CONNECTED,
    CommandAction.ARM_RECONNECT: Relay.ARMED,
}
_WATER_ACTIONS = {
    CommandAction.RESTRICT: Valve.RESTRICTED,
    CommandAction.CLOSE_VALVE: Valve.CLOSED,
    CommandAction.RESTORE: Valve.OPEN,
}


@dataclass(slots=True)
class CommandMemory:
    """Ids and nonces of accepted commands, kept until their command expires."""

    expiry: dict[str, datetime] = field(default_factory=dict)

    def seen(self, now: datetime) -> set[str]:
        for key in [k for k, until in self.expiry.items() if until <= now]:
            del self.expiry[key]
        return set(self.expiry)

    def remember(self, cmd: Command) -> None:
        until = datetime.fromisoformat(cmd.expires_at)
        self.expiry[cmd.id] = until
        self.expiry[cmd.nonce] = until


def _command_id(payload: bytes) -> str:
    """Best-effort id of a malformed command, for the reply (only a well-formed one)."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ""
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and TOKEN_PATTERN.fullmatch(value) else ""


def handle_command(
    meter: Meter, memory: CommandMemory, payload: bytes, now: datetime
) -> tuple[CommandReply, StepResult]:
    """Verify and execute a command; return the reply and the resulting events/status."""
    clock = meter.clock(now)

    def reply(cmd_id: str, reason: RejectReason | None) -> CommandReply:
        relay, valve = meter.relay, meter.valve
        return CommandReply(
            command_id=cmd_id,
            result="ok" if reason is None else "rejected",
            reason=reason.value if reason is not None else None,
            ts=clock,
            relay=relay.value if relay is not None else None,
            valve=valve.value if valve is not None else None,
        )

    try:
        cmd = decode_command(payload, meter_id=meter.meter_id)
    except PayloadError:
        log.info("malformed command", extra={"meter_id": meter.meter_id})
        return reply(_command_id(payload), RejectReason.MALFORMED), StepResult()
    reason = check_command(cmd, key=meter.identity.command_key, now=clock, seen=memory.seen(clock))
    if reason is not None:
        log.info(
            "command %s rejected: %s", cmd.id, reason.value, extra={"meter_id": meter.meter_id}
        )
        return reply(cmd.id, reason), StepResult()
    action = CommandAction(cmd.action)
    if action is CommandAction.READ_STATE:
        memory.remember(cmd)
        return reply(cmd.id, None), StepResult(status_changed=True)
    if meter.is_electric and action in _ELECTRIC_ACTIONS:
        result = meter.set_remote(_ELECTRIC_ACTIONS[action], None, now)
    elif not meter.is_electric and action in _WATER_ACTIONS:
        result = meter.set_remote(None, _WATER_ACTIONS[action], now)
    else:
        return reply(cmd.id, RejectReason.NOT_APPLICABLE), StepResult()
    memory.remember(cmd)
    return reply(cmd.id, None), result


@dataclass(frozen=True, slots=True)
class KeypadEntry:
    request_id: str
    token: str


def parse_keypad(payload: bytes) -> KeypadEntry:
    """Parse a keypad body ``{"id": ..., "token": ...}``; PayloadError(reason) if malformed."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PayloadError("malformed", "keypad input is not JSON") from None
    if not isinstance(body, dict):
        raise PayloadError("malformed", "keypad input must be an object")
    request_id = body.get("id")
    token = body.get("token")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
        raise PayloadError("malformed", "keypad 'id' missing or invalid")
    if not isinstance(token, str):
        raise PayloadError("malformed", "keypad 'token' missing")
    return KeypadEntry(request_id, token.replace(" ", "").replace("-", ""))


def token_rejected(meter: Meter, now: datetime, request_id: str, reason: str) -> StepResult:
    event = meter.event(now, EventType.TOKEN_REJECTED, token_id=request_id, reason=reason)
    return StepResult(events=[event])
