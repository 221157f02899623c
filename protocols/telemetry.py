"""JSON telemetry payloads (docs/protocol.md §3): encode for devices, decode for the gateway.

The decoder validates a whole message before returning anything: one bad reading dead-letters
the message with its reason, so a device never gets half a batch stored silently.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final, NamedTuple

from protocols.channels import CHANNELS
from protocols.errors import PayloadError
from protocols.jsonbody import load_json
from protocols.timestamps import parse_device_time, to_rfc3339

__all__ = [
    "MAX_INSTANTS",
    "MAX_PAYLOAD_BYTES",
    "Instant",
    "Quality",
    "Reading",
    "check_value",
    "decode_json_telemetry",
    "encode_json",
]

MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_INSTANTS: Final = 10_000


class Quality(enum.StrEnum):
    MEASURED = "measured"
    ESTIMATED = "estimated"
    BACKFILLED = "backfilled"


_QUALITIES: Final = frozenset(q.value for q in Quality)


class Reading(NamedTuple):
    """One stored value. A NamedTuple rather than a dataclass: it is built once per reading on
    the ingest hot path and written to COPY as-is, and tuple construction is the cheapest."""

    meter_id: str
    ts: datetime
    channel: str
    value: float
    raw_ts: str | None
    quality: str


@dataclass(frozen=True, slots=True)
class Instant:
    """What a device measured at one moment; the unit of a telemetry message (§3)."""

    ts: datetime
    values: Mapping[str, float]
    quality: Quality = Quality.MEASURED
    raw_ts: str | None = field(default=None, compare=False)
    """Device-local text to send instead of ``ts`` (simulates meters reporting local time)."""

    def to_json_obj(self) -> dict[str, object]:
        obj: dict[str, object] = {
            "ts": self.raw_ts if self.raw_ts is not None else to_rfc3339(self.ts),
            "values": dict(self.values),
        }
        if self.quality is not Quality.MEASURED:
            obj["quality"] = self.quality.value
        return obj


def encode_json(instants: Sequence[Instant]) -> bytes:
    """Encode one instant as an object, several as an array (the batch form)."""
    if not instants:
        raise PayloadError("bad_shape", "a telemetry message needs at least one instant")
    body: object = (
        instants[0].to_json_obj() if len(instants) == 1 else [i.to_json_obj() for i in instants]
    )
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def check_value(channel: str, value: object) -> float:
    """Validate one channel value (§3) and return it as float."""
    spec = CHANNELS.get(channel)
    if spec is None:
        raise PayloadError("unknown_channel", f"unknown channel {channel[:40]!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError("bad_value", f"channel {channel} value must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise PayloadError("bad_value", f"channel {channel} value is not finite")
    if not spec.minimum <= number <= spec.maximum:
        raise PayloadError("out_of_range", f"channel {channel} value {number} outside range")
    return number


def decode_json_telemetry(
    payload: bytes,
    *,
    meter_id: str,
    now: datetime | None = None,
    naive_tz: tzinfo = UTC,
) -> list[Reading]:
    """Decode and validate a JSON telemetry message into readings (all or nothing).

    ``naive_tz`` is the meter's zone, for times written without an offset.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", f"payload of {len(payload)} bytes exceeds the limit")
    # Values are checked one by one below (check_value), so the tree walk is not needed here.
    body = load_json(payload)
    items: Iterable[object]
    if isinstance(body, dict):
        items = (body,)
    elif isinstance(body, list):
        if not body:
            raise PayloadError("bad_shape", "empty batch")
        if len(body) > MAX_INSTANTS:
            raise PayloadError("oversized", f"batch of {len(body)} instants exceeds the limit")
        items = body
    else:
        raise PayloadError("bad_shape", "telemetry must be an object or an array of objects")
    clock = now if now is not None else datetime.now(UTC)
    readings: list[Reading] = []
    append = readings.append
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError("bad_shape", "batch element is not an object")
        ts, raw = parse_device_time(item.get("ts"), now=clock, naive_tz=naive_tz)
        values = item.get("values")
        if not isinstance(values, dict) or not values:
            raise PayloadError("bad_shape", "'values' must be a non-empty object")
        quality = item.get("quality", "measured")
        if not isinstance(quality, str) or quality not in _QUALITIES:
            raise PayloadError("bad_shape", f"unknown quality {str(quality)[:20]!r}")
        for channel, value in values.items():
            append(Reading(meter_id, ts, channel, check_value(channel, value), raw, quality))
    return readings
