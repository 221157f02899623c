"""JSON telemetry decoding (docs/protocol.md §3)."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import CHANNELS, Instant, PayloadError, Quality, decode_json_telemetry, encode_json

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def decode(body: object | bytes, **kw: object) -> list:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decode_json_telemetry(payload, meter_id="M1", now=NOW, **kw)  # type: ignore[arg-type]


def reason(body: object | bytes) -> str:
    with pytest.raises(PayloadError) as info:
        decode(body)
    return info.value.reason


def test_single_instant_with_offset_keeps_raw_time() -> None:
    [a, b] = decode({"ts": "2026-11-23T10:15:00+02:00", "values": {"1.8.0": 12.5, "32.7.0": 231}})
    assert a.ts == datetime(2026, 11, 23, 8, 15, tzinfo=UTC)
    assert a.raw_ts == "2026-11-23T10:15:00+02:00"
    assert (a.meter_id, a.channel, a.value, a.quality) == ("M1", "1.8.0", 12.5, "measured")
    assert (b.channel, b.value) == ("32.7.0", 231.0)


def test_utc_and_epoch_ms_keep_no_raw_time() -> None:
    [a] = decode({"ts": "2026-11-23T08:15:00Z", "values": {"1.8.0": 1}})
    # 2026-11-23T08:15:00Z in epoch ms, computed independently of the decoder
    [b] = decode({"ts": calendar.timegm((2026, 11, 23, 8, 15, 0)) * 1000, "values": {"1.8.0": 1}})
    assert a.ts == b.ts == datetime(2026, 11, 23, 8, 15, tzinfo=UTC)
    assert a.raw_ts is None and b.raw_ts is None


def test_naive_time_is_read_in_the_meter_zone() -> None:
    [r] = decode(
        {"ts": "2026-11-23T10:00:00", "values": {"1.8.0": 1}}, naive_tz=timezone(timedelta(hours=2))
    )
    assert r.ts == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    assert r.raw_ts == "2026-11-23T10:00:00"


def test_batch_of_intervals_and_quality() -> None:
    body = [
        {"ts": 1795422900000 + k * 900_000, "values": {"24.2.1": 100 + k}, "quality": "estimated"}
        for k in range(96)
    ]
    readings = decode(body)
    assert len(readings) == 96
    assert {r.quality for r in readings} == {"estimated"}
    assert readings[95].ts - readings[0].ts == timedelta(minutes=15 * 95)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[" * 100_000, "bad_json"),
        (b'{"ts": 1795422900000, "values": {"1.8.0": NaN}}', "bad_json"),  # not JSON
        (42, "bad_shape"),
        ([], "bad_shape"),
        ([1], "bad_shape"),
        ({"ts": 1795422900000}, "bad_shape"),
        ({"ts": 1795422900000, "values": {}}, "bad_shape"),
        ({"ts": 1795422900000, "values": {"1.8.0": 1}, "quality": ["x"]}, "bad_shape"),
        ({"values": {"1.8.0": 1}}, "missing_timestamp"),
        ({"ts": "yesterday", "values": {"1.8.0": 1}}, "bad_timestamp"),
        ({"ts": "2026-02-30T00:00:00Z", "values": {"1.8.0": 1}}, "bad_timestamp"),
        ({"ts": True, "values": {"1.8.0": 1}}, "bad_timestamp"),
        ({"ts": "1999-12-31T23:59:59Z", "values": {"1.8.0": 1}}, "absurd_timestamp"),
        ({"ts": "2026-11-25T12:00:01Z", "values": {"1.8.0": 1}}, "absurd_timestamp"),
        ({"ts": 10**17, "values": {"1.8.0": 1}}, "absurd_timestamp"),
        (b'{"ts": 100000000000000000000, "values": {"1.8.0": 1}}', "bad_timestamp"),  # a float
        ({"ts": 1795422900000, "values": {"9.9.9": 1}}, "unknown_channel"),
        ({"ts": 1795422900000, "values": {"1.8.0": "12"}}, "bad_value"),
        ({"ts": 1795422900000, "values": {"1.8.0": True}}, "bad_value"),
        ({"ts": 1795422900000, "values": {"1.8.0": None}}, "bad_value"),
        ({"ts": 1795422900000, "values": {"32.7.0": 5000}}, "out_of_range"),
        ({"ts": 1795422900000, "values": {"1.8.0": -1}}, "out_of_range"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(body: object, expected: str) -> None:
    assert reason(body) == expected


def test_oversized_payload_is_rejected_before_parsing() -> None:
    assert reason(b" " * (256 * 1024 + 1)) == "oversized"


def test_one_bad_reading_rejects_the_whole_message() -> None:
    body = [
        {"ts": 1795422900000, "values": {"1.8.0": 1}},
        {"ts": 1795422900000, "values": {"1.8.0": "oops"}},
    ]
    assert reason(body) == "bad_value"


instants = st.lists(
    st.builds(
        Instant,
        ts=st.datetimes(
            min_value=datetime(2000, 1, 2), max_value=datetime(2026, 11, 23), timezones=st.just(UTC)
        ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
        values=st.dictionaries(
            st.sampled_from(["1.8.0", "2.8.0", "24.2.1", "32.7.0", "water.flow"]),
            st.floats(min_value=0, max_value=999.0),
            min_size=1,
        ),
        quality=st.sampled_from(list(Quality)),
    ),
    min_size=1,
    max_size=20,
)


@given(instants)
def test_encode_then_decode_round_trips(batch: list[Instant]) -> None:
    readings = decode(encode_json(batch))
    expected = [(i.ts, ch, v, i.quality.value) for i in batch for ch, v in i.values.items()]
    assert [(r.ts, r.channel, r.value, r.quality) for r in readings] == expected


@settings(max_examples=300)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_any_bytes_give_readings_or_a_payload_error(payload: bytes) -> None:
    try:
        readings = decode(payload)
    except PayloadError as exc:
        assert exc.reason
    else:
        assert all(r.channel in CHANNELS for r in readings)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["ts", "values", "quality", "x"]), json_values))
def test_any_json_object_gives_readings_or_a_payload_error(body: dict) -> None:
    try:
        decode(json.dumps(body).encode())
    except PayloadError as exc:
        assert exc.reason


JOBURG = ZoneInfo("Africa/Johannesburg")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("local", "zone", "utc"),
    [
        ("2026-11-01T10:00:00", JOBURG, datetime(2026, 11, 1, 8, 0, tzinfo=UTC)),  # SAST, no DST
        ("2026-07-01T12:00:00", BERLIN, datetime(2026, 7, 1, 10, 0, tzinfo=UTC)),  # CEST
        ("2026-02-01T12:00:00", BERLIN, datetime(2026, 2, 1, 11, 0, tzinfo=UTC)),  # CET
        # 2026-10-25: clocks go back 03:00 CEST → 02:00 CET, so 02:30 happens twice; the later
        # one (02:30 CET = 01:30Z) is taken, as PostgreSQL's AT TIME ZONE does.
        ("2026-10-25T02:30:00", BERLIN, datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
        ("2026-10-25T01:59:00", BERLIN, datetime(2026, 10, 24, 23, 59, tzinfo=UTC)),
        ("2026-10-25T03:00:00", BERLIN, datetime(2026, 10, 25, 2, 0, tzinfo=UTC)),
        # 2026-03-29: clocks go forward 02:00 CET → 03:00 CEST, so 02:30 never happens; it is
        # read with the offset before the change (+01:00), i.e. as 03:30 CEST.
        ("2026-03-29T02:30:00", BERLIN, datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        ("2026-03-29T03:30:00", BERLIN, datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        ("2026-03-29T01:30:00", BERLIN, datetime(2026, 3, 29, 0, 30, tzinfo=UTC)),
    ],
)
def test_local_time_in_the_meter_zone_and_the_dst_policy(
    local: str, zone: ZoneInfo, utc: datetime
) -> None:
    [r] = decode({"ts": local, "values": {"1.8.0": 1}}, naive_tz=zone)
    assert (r.ts, r.raw_ts) == (utc, local)


def test_an_explicit_offset_wins_over_the_meter_zone() -> None:
    [r] = decode({"ts": "2026-07-01T12:00:00Z", "values": {"1.8.0": 1}}, naive_tz=BERLIN)
    assert (r.ts, r.raw_ts) == (datetime(2026, 7, 1, 12, 0, tzinfo=UTC), None)


def test_local_times_agree_with_postgresql_at_time_zone(database_url: str) -> None:
    """The DST policy is PostgreSQL's: ``raw_ts::timestamp AT TIME ZONE zone`` gives ``ts``."""
    locals_ = [f"2026-10-25T{h:02d}:{m:02d}:00" for h in range(4) for m in (0, 30)] + [
        f"2026-03-29T{h:02d}:{m:02d}:00" for h in range(4) for m in (0, 30)
    ]
    with psycopg.connect(database_url) as conn:
        for local in locals_:
            [r] = decode({"ts": local, "values": {"1.8.0": 1}}, naive_tz=BERLIN)
            row = conn.execute(
                "SELECT %s::timestamp AT TIME ZONE 'Europe/Berlin'", (local,)
            ).fetchone()
            assert row is not None and r.ts == row[0], local
