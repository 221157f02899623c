"""One strict JSON parser for every device body: what PostgreSQL cannot store never gets through.

Each case below was accepted (or raised something other than PayloadError) with the standard
library's ``json``: NaN/Infinity, ``\\u0000``, integers too large for a float.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from protocols import PayloadError, decode_events, decode_json_telemetry, decode_status
from protocols.jsonbody import MAX_DEPTH, check_tree, load_json

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
HUGE = b"1" + b"0" * 400


def reason_of(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(PayloadError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.reason


@pytest.mark.parametrize(
    "body",
    [
        b'{"state":"online","credit":' + HUGE + b"}",  # OverflowError with json + float()
        b'{"state":"online","credit":NaN}',
        b'{"state":"online","credit":Infinity}',
        b'{"state":"online","credit":-Infinity}',
        b'{"state":"online","credit":1e400}',
        b'{"state":"online","firmware":"v1\\u0000"}',
        b'{"state":"online","note\\u0000":1}',
        b'{"state":"online","firmware":"\\ud800"}',  # lone surrogate escape
        b'{"state":"online","firmware":"\xed\xa0\x80"}',  # surrogate encoded as UTF-8
        b'{"state":"online","firmware":"\xff"}',  # invalid UTF-8
        b'{"state":"online","x":9223372036854775808}',  # 2**63: past 64-bit signed
        b'{"state":"online","x":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}",
    ],
)
def test_status_refuses_what_strict_json_or_storage_refuses(body: bytes) -> None:
    assert reason_of(decode_status, body) == "bad_json"


@pytest.mark.parametrize(
    "body",
    [
        b'{"ts":"2026-11-01T00:00:00Z","type":"low_battery","details":{"v":NaN}}',
        b'{"ts":"2026-11-01T00:00:00Z","type":"low_battery","details":{"v":"a\\u0000b"}}',
        b'{"ts":"2026-11-01T00:00:00Z","type":"low_battery","details":{"v\\u0000":1}}',
        b'{"ts":"2026-11-01T00:00:00Z","type":"low_battery","details":{"v":"\\udc00"}}',
        b'{"ts":"2026-11-01T00:00:00Z","type":"low_battery","details":{"v":' + HUGE + b"}}",
        b'{"ts":"2026-11-01T00:00:00Z","type":"low_battery","details":{"v":9223372036854775808}}',
        b'[{"ts":"2026-11-01T00:00:00Z","type":"low_battery"},' + b"[" * 2000 + b"]" * 2000 + b"]",
    ],
)
def test_events_refuse_what_strict_json_or_storage_refuses(body: bytes) -> None:
    assert reason_of(decode_events, body, now=NOW) == "bad_json"


def test_event_details_at_the_64_bit_limits_are_kept() -> None:
    [event] = decode_events(
        b'{"ts":"2026-11-01T00:00:00Z","type":"low_battery",'
        b'"details":{"lo":-9223372036854775808,"hi":9223372036854775807,"s":"\\u00e9"}}',
        now=NOW,
    )
    assert dict(event.details) == {"lo": -(2**63), "hi": 2**63 - 1, "s": "é"}


def test_telemetry_refuses_non_finite_and_huge_numbers() -> None:
    for value in (b"NaN", b"Infinity", HUGE, b"1e400"):
        body = b'{"ts":"2026-11-01T00:00:00Z","values":{"1.8.0":' + value + b"}}"
        assert reason_of(decode_json_telemetry, body, meter_id="M1", now=NOW) == "bad_json"


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_a_time_pushed_off_the_calendar_by_its_offset_is_absurd(ts: str) -> None:
    # Raised OverflowError out of the decoder before: the offset moves it past year 9999 / 1.
    body = f'{{"ts":"{ts}","values":{{"1.8.0":1}}}}'.encode()
    assert reason_of(decode_json_telemetry, body, meter_id="M1", now=NOW) == "absurd_timestamp"


def test_non_ascii_digits_are_not_a_timestamp() -> None:
    body = '{"ts":"٢٠٢٦-11-01T00:00:00Z","values":{"1.8.0":1}}'.encode()
    assert reason_of(decode_json_telemetry, body, meter_id="M1", now=NOW) == "bad_timestamp"


def test_status_numbers_are_range_checked() -> None:
    assert reason_of(decode_status, b'{"state":"online","credit":"12"}') == "bad_value"
    assert reason_of(decode_status, b'{"state":"online","credit":1e12}') == "out_of_range"
    assert reason_of(decode_status, b'{"state":"online","interval_s":0}') == "out_of_range"
    assert reason_of(decode_status, b'{"state":"online","interval_s":1.5}') == "bad_value"
    status = decode_status(b'{"state":"online","credit":12.5,"interval_s":900,"x":[1,{"y":null}]}')
    assert (status.credit, status.interval_s) == (12.5, 900)
    assert status.document == {
        "state": "online",
        "credit": 12.5,
        "interval_s": 900,
        "x": [1, {"y": None}],
    }


def test_check_tree_limits() -> None:
    check_tree({"a": [1, "x", None, True, 1.5, {"b": -(2**63)}]})
    nested: object = 0
    for _ in range(MAX_DEPTH):
        nested = [nested]
    check_tree(nested)
    with pytest.raises(PayloadError):
        check_tree([nested])
    with pytest.raises(PayloadError):
        check_tree({"a": 2**63})
    with pytest.raises(PayloadError):
        check_tree(["\x00"])


def test_load_json_is_strict() -> None:
    assert load_json(b'{"a": [1, 2.5, "\\u00e9"]}') == {"a": [1, 2.5, "é"]}
    for bad in (b"NaN", b"[1,]", b"{'a': 1}", b'"\\ud800"', b"\xff", b"[" * 1100 + b"]" * 1100):
        with pytest.raises(PayloadError) as info:
            load_json(bad)
        assert info.value.reason == "bad_json"
