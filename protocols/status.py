"""Retained meter status (docs/protocol.md §6), including the ``offline`` last will."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final

from protocols.errors import PayloadError
from protocols.jsonbody import check_tree, load_json
from protocols.telemetry import MAX_PAYLOAD_BYTES
from protocols.timestamps import parse_device_time, to_rfc3339

__all__ = ["OFFLINE_WILL", "Status", "decode_status", "encode_status"]

RELAY_STATES = frozenset({"connected", "disconnected", "armed"})
VALVE_STATES = frozenset({"open", "restricted", "closed"})
OFFLINE_WILL = b'{"state":"offline"}'
MAX_CREDIT: Final = 1e9
"""Largest credit a meter may report (kWh or m³); anything larger is a garbled message."""
MAX_INTERVAL_S: Final = 7 * 86400


@dataclass(frozen=True, slots=True)
class Status:
    online: bool
    ts: datetime | None = None
    firmware: str | None = None
    relay: str | None = None
    valve: str | None = None
    credit: float | None = None
    interval_s: int | None = None
    document: Mapping[str, object] | None = field(default=None, compare=False, repr=False)
    """The JSON object as the meter sent it, checked storable (None for a bare word)."""


def encode_status(status: Status) -> bytes:
    body: dict[str, object] = {"state": "online" if status.online else "offline"}
    if status.ts is not None:
        body["ts"] = to_rfc3339(status.ts)
    for name in ("firmware", "relay", "valve", "credit", "interval_s"):
        body[name] = getattr(status, name)
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode_status(payload: bytes, *, now: datetime | None = None, naive_tz: tzinfo = UTC) -> Status:
    """Decode a status body; a bare ``online``/``offline`` is accepted from simple devices.

    ``naive_tz`` is the meter's zone, for a ``ts`` written without an offset.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", "status body too large")
    stripped = payload.strip()
    if stripped in (b"online", b"offline"):
        return Status(online=stripped == b"online")
    body = load_json(payload)
    if not isinstance(body, dict) or body.get("state") not in ("online", "offline"):
        raise PayloadError("bad_shape", "status needs state 'online' or 'offline'")
    check_tree(body, what="status")
    ts = None
    if body.get("ts") is not None:
        clock = now if now is not None else datetime.now(UTC)
        ts, _ = parse_device_time(body["ts"], now=clock, naive_tz=naive_tz, plausible=False)
    relay, valve = body.get("relay"), body.get("valve")
    if relay is not None and (not isinstance(relay, str) or relay not in RELAY_STATES):
        raise PayloadError("bad_shape", f"unknown relay state {str(relay)[:20]!r}")
    if valve is not None and (not isinstance(valve, str) or valve not in VALVE_STATES):
        raise PayloadError("bad_shape", f"unknown valve state {str(valve)[:20]!r}")
    firmware = body.get("firmware")
    if firmware is not None and not isinstance(firmware, str):
        raise PayloadError("bad_shape", "status 'firmware' must be text")
    return Status(
        online=body["state"] == "online",
        ts=ts,
        firmware=firmware[:64] if firmware is not None else None,
        relay=relay,
        valve=valve,
        credit=_credit(body.get("credit")),
        interval_s=_interval(body.get("interval_s")),
        document=body,
    )


def _credit(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError("bad_value", "status 'credit' must be a number")
    credit = float(value)  # within 64 bits (check_tree), so always a finite float
    if not math.isfinite(credit) or abs(credit) > MAX_CREDIT:
        raise PayloadError("out_of_range", f"status 'credit' {credit:.6g} outside range")
    return credit


def _interval(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError("bad_value", "status 'interval_s' must be an integer")
    if not 0 < value <= MAX_INTERVAL_S:
        raise PayloadError("out_of_range", f"status 'interval_s' {value} outside range")
    return value
