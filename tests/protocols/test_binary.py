"""Compact binary frames (docs/protocol.md §4)."""

from __future__ import annotations

import calendar
import math
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import BinaryRow, PayloadError, decode_frame, encode_frame

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BASE_MS = calendar.timegm((2026, 11, 23, 8, 15, 0)) * 1000


def test_frame_layout_matches_the_documented_bytes() -> None:
    frame = encode_frame(BASE_MS, ["1.8.0"], [BinaryRow(900_000, [12.5])])
    expected = (
        b"MG\x01\x00"
        + struct.pack(">q", BASE_MS)
        + b"\x01\x051.8.0"
        + b"\x00\x01"
        + struct.pack(">I", 900_000)
        + struct.pack(">d", 12.5)
    )
    assert frame == expected
    [r] = decode_frame(frame, meter_id="M1", now=NOW)
    assert (r.meter_id, r.channel, r.value) == ("M1", "1.8.0", 12.5)
    assert r.ts == datetime(2026, 11, 23, 8, 30, tzinfo=UTC)


def test_nan_means_not_measured_and_concentrator_rows_name_meters() -> None:
    frame = encode_frame(
        BASE_MS,
        ["1.8.0", "32.7.0"],
        [BinaryRow(0, [1.0, math.nan], "A"), BinaryRow(0, [2.0, 230.0], "B")],
    )
    readings = decode_frame(frame, meter_id=None, now=NOW)
    assert [(r.meter_id, r.channel, r.value) for r in readings] == [
        ("A", "1.8.0", 1.0),
        ("B", "1.8.0", 2.0),
        ("B", "32.7.0", 230.0),
    ]


def test_meter_ids_only_on_the_concentrator_topic() -> None:
    with_ids = encode_frame(BASE_MS, ["1.8.0"], [BinaryRow(0, [1.0], "A")])
    without = encode_frame(BASE_MS, ["1.8.0"], [BinaryRow(0, [1.0])])
    with pytest.raises(PayloadError):
        decode_frame(with_ids, meter_id="M1", now=NOW)
    with pytest.raises(PayloadError):
        decode_frame(without, meter_id=None, now=NOW)


@pytest.mark.parametrize("cut", [1, 5, 13, 20, 25])
def test_truncated_frames_are_bad_frames(cut: int) -> None:
    frame = encode_frame(BASE_MS, ["1.8.0"], [BinaryRow(0, [1.0]), BinaryRow(1000, [2.0])])
    with pytest.raises(PayloadError) as info:
        decode_frame(frame[:-cut], meter_id="M1", now=NOW)
    assert info.value.reason == "bad_frame"


def test_trailing_bytes_and_values_are_checked() -> None:
    frame = encode_frame(BASE_MS, ["1.8.0"], [BinaryRow(0, [1.0])])
    with pytest.raises(PayloadError) as info:
        decode_frame(frame + b"\x00", meter_id="M1", now=NOW)
    assert info.value.reason == "bad_frame"
    bad_value = encode_frame(BASE_MS, ["32.7.0"], [BinaryRow(0, [math.inf])])
    with pytest.raises(PayloadError) as info:
        decode_frame(bad_value, meter_id="M1", now=NOW)
    assert info.value.reason == "bad_value"


rows = st.lists(
    st.tuples(st.integers(0, 10**9), st.floats(0, 1e6), st.floats(0, 500)),
    min_size=1,
    max_size=50,
)


@given(rows)
def test_round_trip(data: list[tuple[int, float, float]]) -> None:
    frame = encode_frame(
        BASE_MS - 10**9, ["1.8.0", "32.7.0"], [BinaryRow(o, [a, b]) for o, a, b in data]
    )
    readings = decode_frame(frame, meter_id="M9", now=NOW)
    assert [r.value for r in readings] == [v for _, a, b in data for v in (a, b)]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_after_magic_give_readings_or_a_payload_error(tail: bytes) -> None:
    try:
        decode_frame(b"MG" + tail, meter_id="M1", now=NOW)
    except PayloadError as exc:
        assert exc.reason
