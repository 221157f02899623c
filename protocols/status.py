"""Retained meter status (docs/protocol.md §6), including the ``offline`` last will."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from protocols.errors import PayloadError
from protocols.telemetry import MAX_PAYLOAD_BYTES
from protocols.timestamps import to_rfc3339

__all__ = ["OFFLINE_WILL", "Status", "decode_status", "encode_status"]

RELAY_STATES = frozenset({"connected", "disconnected", "armed"})
VALVE_STATES = frozenset({"open", "restricted", "closed"})
OFFLINE_WILL = b'{"state":"offline"}'


@dataclass(frozen=True, slots=True)
class Status:
    online: bool
    ts: datetime | None = None
    firmware: str | None = None
    relay: str | None = None
    valve: str | None = None
    credit: float | None = None
    interval_s: int | None = None


def encode_status(status: Status) -> bytes:
    body: dict[str, object] = {"state": "online" if status.online else "offline"}
    if status.ts is not None:
        body["ts"] = to_rfc3339(status.ts)
    for name in ("firmware", "relay", "valve", "credit", "interval_s"):
        body[name] = getattr(status, name)
    return json.dumps(body, separators=(",", ":")).encode()


def decode_status(payload: bytes) -> Status:
    """Decode a status body; a bare ``online``/``offline`` is accepted from simple devices."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", "status body too large")
    stripped = payload.strip()
    if stripped in (b"online", b"offline"):
        return Status(online=stripped == b"online")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PayloadError("bad_json", "status is not JSON") from None
    if not isinstance(body, dict) or body.get("state") not in ("online", "offline"):
        raise PayloadError("bad_shape", "status needs state 'online' or 'offline'")
    try:
        ts = datetime.fromisoformat(body["ts"]) if isinstance(body.get("ts"), str) else None
    except ValueError:
        raise PayloadError("bad_timestamp", "status 'ts' is not RFC 3339") from None
    relay, valve = body.get("relay"), body.get("valve")
    if relay is not None and (not isinstance(relay, str) or relay not in RELAY_STATES):
        raise PayloadError("bad_shape", f"unknown relay state {str(relay)[:20]!r}")
    if valve is not None and (not isinstance(valve, str) or valve not in VALVE_STATES):
        raise PayloadError("bad_shape", f"unknown valve state {str(valve)[:20]!r}")
    credit = body.get("credit")
    interval = body.get("interval_s")
    return Status(
        online=body["state"] == "online",
        ts=ts,
        firmware=str(body["firmware"])[:64] if body.get("firmware") is not None else None,
        relay=relay,
        valve=valve,
        credit=float(credit)
        if isinstance(credit, int | float) and not isinstance(credit, bool)
        else None,
        interval_s=interval
        if isinstance(interval, int) and not isinstance(interval, bool)
        else None,
    )
