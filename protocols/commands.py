"""Signed meter commands and their replies (docs/protocol.md §7).

The signature is HMAC-SHA-256 under the meter's 32-byte command key over
``v1|meter_id|id|action|issued_at|expires_at|nonce``. A transport reply is not confirmation:
the gateway confirms from the meter's reported state, which the reply also carries.

The ``|``-joined input is unambiguous only because no field can contain ``|``: ``meter_id``,
``id`` and ``nonce`` are restricted to ``[A-Za-z0-9_-]`` (:data:`TOKEN_PATTERN`), ``action`` is
a known word and the times are RFC 3339. Both sides enforce it: :func:`sign_command` refuses
to sign anything else, and a meter rejects such a command as ``malformed`` before it even
checks the signature, so a signature cannot be re-split into another assignment of fields.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from protocols.errors import PayloadError, UsageError
from protocols.jsonbody import load_json
from protocols.status import RELAY_STATES, VALVE_STATES
from protocols.timestamps import to_rfc3339
from protocols.topics import METER_ID_PATTERN

__all__ = [
    "CLOCK_SKEW",
    "TOKEN_PATTERN",
    "Command",
    "CommandAction",
    "CommandReply",
    "RejectReason",
    "check_command",
    "decode_command",
    "decode_reply",
    "sign_command",
]

CLOCK_SKEW: Final = timedelta(minutes=5)
"""How far a command's issue time may lie ahead of the meter's clock."""
COMMAND_KEY_BYTES: Final = 32
TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a command ``id`` and ``nonce`` may be (docs/protocol.md §7)."""
_SEPARATOR: Final = "|"
_MAX_REPLY_BYTES: Final = 4096


class CommandAction(enum.StrEnum):
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"
    ARM_RECONNECT = "arm_reconnect"
    RESTRICT = "restrict"
    CLOSE_VALVE = "close_valve"
    RESTORE = "restore"
    READ_STATE = "read_state"


_ACTIONS: Final = frozenset(a.value for a in CommandAction)


class RejectReason(enum.StrEnum):
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    UNKNOWN_ACTION = "unknown_action"
    NOT_APPLICABLE = "not_applicable"
    MALFORMED = "malformed"


_REASONS: Final = frozenset(r.value for r in RejectReason)


@dataclass(frozen=True, slots=True)
class Command:
    """A command as sent on ``meters/{meter_id}/commands``; ``sig`` as received or signed."""

    meter_id: str
    id: str
    action: str
    issued_at: str
    expires_at: str
    nonce: str
    sig: str

    def well_formed(self) -> bool:
        """Whether the fields can be signed unambiguously (see the module docstring)."""
        return (
            METER_ID_PATTERN.fullmatch(self.meter_id) is not None
            and TOKEN_PATTERN.fullmatch(self.id) is not None
            and TOKEN_PATTERN.fullmatch(self.nonce) is not None
            and not any(
                _SEPARATOR in value for value in (self.action, self.issued_at, self.expires_at)
            )
        )

    def signed_text(self) -> bytes:
        return (
            f"v1|{self.meter_id}|{self.id}|{self.action}|{self.issued_at}|"
            f"{self.expires_at}|{self.nonce}"
        ).encode()

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "action": self.action,
                "issued_at": self.issued_at,
                "expires_at": self.expires_at,
                "nonce": self.nonce,
                "sig": self.sig,
            },
            separators=(",", ":"),
        ).encode()


def _mac(key: bytes, text: bytes) -> str:
    if len(key) != COMMAND_KEY_BYTES:
        raise UsageError("a command key is 32 bytes")
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def sign_command(
    key: bytes,
    *,
    meter_id: str,
    command_id: str,
    action: CommandAction,
    issued_at: datetime,
    ttl: timedelta,
    nonce: str,
) -> Command:
    """Build and sign a command (gateway side).

    UsageError if ``meter_id``, ``command_id`` or ``nonce`` is outside ``[A-Za-z0-9_-]``.
    """
    unsigned = Command(
        meter_id=meter_id,
        id=command_id,
        action=action.value,
        issued_at=to_rfc3339(issued_at),
        expires_at=to_rfc3339(issued_at + ttl),
        nonce=nonce,
        sig="",
    )
    if not unsigned.well_formed():
        raise UsageError("command meter_id, id and nonce must be 1-128 characters of [A-Za-z0-9_-]")
    return replace(unsigned, sig=_mac(key, unsigned.signed_text()))


def decode_command(payload: bytes, *, meter_id: str) -> Command:
    """Parse a command body addressed to ``meter_id`` (meter side); PayloadError if malformed."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PayloadError("malformed", "command is not JSON") from None
    if not isinstance(body, dict):
        raise PayloadError("malformed", "command must be an object")
    values: dict[str, str] = {}
    for name in ("id", "action", "issued_at", "expires_at", "nonce", "sig"):
        value = body.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= 128:
            raise PayloadError("malformed", f"command field {name!r} missing or invalid")
        values[name] = value
    cmd = Command(meter_id=meter_id, **values)
    if not cmd.well_formed():
        raise PayloadError("malformed", "command id or nonce outside [A-Za-z0-9_-]")
    return cmd


def check_command(
    cmd: Command, *, key: bytes, now: datetime, seen: set[str] | frozenset[str]
) -> RejectReason | None:
    """Return why a meter must reject ``cmd``, or None if it is authentic, fresh and new.

    ``seen`` holds the ids and nonces the meter accepted within their expiry windows.
    """
    if not cmd.well_formed():
        return RejectReason.MALFORMED
    if not hmac.compare_digest(_mac(key, cmd.signed_text()), cmd.sig.lower()):
        return RejectReason.BAD_SIGNATURE
    try:
        issued = datetime.fromisoformat(cmd.issued_at)
        expires = datetime.fromisoformat(cmd.expires_at)
    except ValueError:
        return RejectReason.MALFORMED
    if issued.tzinfo is None or expires.tzinfo is None:
        return RejectReason.MALFORMED
    if issued > now + CLOCK_SKEW:
        return RejectReason.NOT_YET_VALID
    if now >= expires:
        return RejectReason.EXPIRED
    if cmd.id in seen or cmd.nonce in seen:
        return RejectReason.REPLAYED
    if cmd.action not in _ACTIONS:
        return RejectReason.UNKNOWN_ACTION
    return None


@dataclass(frozen=True, slots=True)
class CommandReply:
    """A meter's answer on ``meters/{meter_id}/commands/reply``."""

    command_id: str
    result: str
    """``ok`` or ``rejected``."""
    reason: str | None
    ts: datetime
    relay: str | None
    valve: str | None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "command_id": self.command_id,
                "result": self.result,
                "reason": self.reason,
                "ts": to_rfc3339(self.ts),
                "state": {"relay": self.relay, "valve": self.valve},
            },
            separators=(",", ":"),
        ).encode()


def decode_reply(payload: bytes) -> CommandReply:
    """Parse a command reply (gateway side, docs/protocol.md §7); PayloadError if malformed.

    Strict: the body is strict JSON (``bad_json``); ``command_id`` is empty or a well-formed
    id, ``result`` and ``reason`` are the protocol's words, ``ts`` has an offset and the state
    holds known relay / valve words (``bad_shape``).
    """
    if len(payload) > _MAX_REPLY_BYTES:
        raise PayloadError("oversized", "command reply too large")
    body = load_json(payload)
    if not isinstance(body, dict):
        raise PayloadError("bad_shape", "command reply must be an object")
    command_id, result, reason = body.get("command_id"), body.get("result"), body.get("reason")
    if not isinstance(command_id, str) or (
        command_id and TOKEN_PATTERN.fullmatch(command_id) is None
    ):
        raise PayloadError("bad_shape", "command reply 'command_id' must be a command id")
    if not isinstance(result, str) or result not in ("ok", "rejected"):
        raise PayloadError("bad_shape", "command reply 'result' must be ok or rejected")
    if reason is not None and (not isinstance(reason, str) or reason not in _REASONS):
        raise PayloadError("bad_shape", "command reply 'reason' is not a known reason")
    ts_text = body.get("ts")
    try:
        ts = datetime.fromisoformat(ts_text) if isinstance(ts_text, str) else None
    except ValueError:
        ts = None
    if ts is None or ts.tzinfo is None:
        raise PayloadError("bad_shape", "command reply 'ts' must be RFC 3339 with an offset")
    state = body.get("state", {})
    if not isinstance(state, dict):
        raise PayloadError("bad_shape", "command reply 'state' must be an object")
    relay, valve = state.get("relay"), state.get("valve")
    if relay is not None and (not isinstance(relay, str) or relay not in RELAY_STATES):
        raise PayloadError("bad_shape", "command reply has an unknown relay state")
    if valve is not None and (not isinstance(valve, str) or valve not in VALVE_STATES):
        raise PayloadError("bad_shape", "command reply has an unknown valve state")
    return CommandReply(
        command_id=command_id, result=result, reason=reason, ts=ts, relay=relay, valve=valve
    )
