"""Compact binary telemetry frames (docs/protocol.md §4).

::

    "MG" | version u8 = 1 | flags u8 | base epoch-ms i64 | C u8 | C × (u8 len, ASCII name)
    | R u16 | R × ( [u8 len, ASCII meter_id]  if flags bit 0
                    u32 offset-ms, C × float64 (NaN = not measured) )

Big-endian throughout. A frame decodes completely or not at all: truncation, trailing bytes or
a bad field raise PayloadError("bad_frame", …); per-value checks are those of the JSON form.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from math import isnan
from typing import Any, Final

from protocols.errors import PayloadError
from protocols.telemetry import MAX_PAYLOAD_BYTES, Reading, check_value
from protocols.timestamps import EARLIEST, MAX_FUTURE
from protocols.topics import METER_ID_PATTERN

__all__ = ["MAGIC", "BinaryRow", "decode_frame", "encode_frame", "is_binary"]

MAGIC: Final = b"MG"
VERSION: Final = 1
FLAG_METER_IDS: Final = 0x01
_HEADER = struct.Struct(">2sBBqB")


def is_binary(payload: bytes) -> bool:
    return payload[:2] == MAGIC


@dataclass(frozen=True, slots=True)
class BinaryRow:
    offset_ms: int
    values: Sequence[float]
    """One value per frame channel, NaN where not measured."""
    meter_id: str | None = None


def encode_frame(
    base_ms: int,
    channels: Sequence[str],
    rows: Sequence[BinaryRow],
) -> bytes:
    """Build a frame; rows carry meter ids exactly when it is a concentrator frame."""
    with_ids = bool(rows) and rows[0].meter_id is not None
    if not 1 <= len(channels) <= 64 or not 1 <= len(rows) <= 0xFFFF:
        raise PayloadError("bad_frame", "a frame needs 1-64 channels and 1-65535 rows")
    parts = [
        _HEADER.pack(MAGIC, VERSION, FLAG_METER_IDS if with_ids else 0, base_ms, len(channels))
    ]
    for name in channels:
        encoded = name.encode("ascii")
        parts.append(bytes((len(encoded),)) + encoded)
    parts.append(struct.pack(">H", len(rows)))
    row_fmt = struct.Struct(f">I{len(channels)}d")
    for row in rows:
        if (row.meter_id is not None) != with_ids:
            raise PayloadError("bad_frame", "either every row names its meter or none does")
        if row.meter_id is not None:
            mid = row.meter_id.encode("ascii")
            parts.append(bytes((len(mid),)) + mid)
        parts.append(row_fmt.pack(row.offset_ms, *row.values))
    return b"".join(parts)


def decode_frame(
    payload: bytes,
    *,
    meter_id: str | None,
    now: datetime | None = None,
) -> list[Reading]:
    """Decode a frame into readings.

    ``meter_id`` is the topic's meter for a per-meter frame, or None for a concentrator frame
    (whose rows must then name their meters).
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", f"frame of {len(payload)} bytes exceeds the limit")
    try:
        return _decode(payload, meter_id, now if now is not None else datetime.now(UTC))
    except struct.error as exc:
        raise PayloadError("bad_frame", f"truncated frame: {exc}") from None
    except (UnicodeDecodeError, IndexError):
        raise PayloadError("bad_frame", "truncated or non-ASCII frame field") from None


def _rows(
    payload: bytes, pos: int, n_rows: int, row_fmt: struct.Struct, topic_meter: str | None
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(meter id, unpacked row) for every row; the frame must end exactly after the last."""
    if topic_meter is not None:
        # Fixed-size rows back to back: unpack them in one pass.
        end = pos + n_rows * row_fmt.size
        if end != len(payload):
            raise PayloadError("bad_frame", f"rows end at byte {end}, frame has {len(payload)}")
        for row in row_fmt.iter_unpack(payload[pos:end]):
            yield topic_meter, row
        return
    for _ in range(n_rows):
        size = payload[pos]
        row_meter = payload[pos + 1 : pos + 1 + size].decode("ascii")
        pos += 1 + size
        if not METER_ID_PATTERN.fullmatch(row_meter):
            raise PayloadError("bad_frame", f"invalid meter id {row_meter[:70]!r}")
        yield row_meter, row_fmt.unpack_from(payload, pos)
        pos += row_fmt.size
    if pos != len(payload):
        raise PayloadError("bad_frame", f"{len(payload) - pos} trailing bytes after the rows")


def _decode(payload: bytes, topic_meter: str | None, now: datetime) -> list[Reading]:
    magic, version, flags, base_ms, n_channels = _HEADER.unpack_from(payload, 0)
    if magic != MAGIC or version != VERSION or flags & ~FLAG_METER_IDS:
        raise PayloadError("bad_frame", "bad magic, version or flags")
    with_ids = bool(flags & FLAG_METER_IDS)
    if with_ids == (topic_meter is not None):
        raise PayloadError(
            "bad_frame", "meter ids must be present exactly on the concentrator topic"
        )
    if not 1 <= n_channels <= 64:
        raise PayloadError("bad_frame", "channel count must be 1-64")
    pos = _HEADER.size
    channels: list[str] = []
    for _ in range(n_channels):
        size = payload[pos]
        channels.append(payload[pos + 1 : pos + 1 + size].decode("ascii"))
        pos += 1 + size
    (n_rows,) = struct.unpack_from(">H", payload, pos)
    pos += 2
    if n_rows == 0:
        raise PayloadError("bad_frame", "frame has no rows")
    row_fmt = struct.Struct(f">I{n_channels}d")
    lowest_ms = int(EARLIEST.timestamp() * 1000)
    highest_ms = int((now + MAX_FUTURE).timestamp() * 1000)
    readings: list[Reading] = []
    append = readings.append
    for row_meter, (offset_ms, *values) in _rows(payload, pos, n_rows, row_fmt, topic_meter):
        at_ms = base_ms + offset_ms
        if not lowest_ms <= at_ms <= highest_ms:
            raise PayloadError("absurd_timestamp", f"row time {at_ms} ms is implausible")
        ts = datetime.fromtimestamp(at_ms / 1000, UTC)
        present = False
        for channel, value in zip(channels, values, strict=True):
            if isnan(value):  # not measured in this row
                continue
            present = True
            append(Reading(row_meter, ts, channel, check_value(channel, value), None, "measured"))
        if not present:
            raise PayloadError("bad_frame", "row has no measured value")
    return readings
