"""Any topic and any bytes give the consumer work to store, never an exception, and whatever it
produces the database accepts (no batch sent into the one-message-per-transaction path).

The payload strategies aim at the edges of JSON that a lax parser lets through and PostgreSQL
then refuses, or that overflow Python's own conversions: huge integers, non-finite numbers,
escapes, ``\\u0000``, lone surrogates, deep nesting and invalid UTF-8.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ingest import consumer
from gateway.ingest.consumer import INTERNAL_ERROR, MessageDecoder, decode_message
from gateway.ingest.work import Work
from gateway.ingest.writer import STAGING_DDL, write_batch
from protocols import CHANNELS, Topics

TOPICS = Topics("site/")
NOW = datetime(2026, 11, 23, tzinfo=UTC)

topic_strategy = st.one_of(
    st.text(max_size=80),
    st.text(st.characters(codec=None, categories=None), max_size=20),  # surrogates, NUL
    st.builds(
        "site/meters/{}/{}".format,
        st.text(max_size=70),
        st.sampled_from(
            ["telemetry", "events", "status", "commands", "commands/reply", "keypad", "x"]
        ),
    ),
    st.builds(
        "site/concentrators/{}/telemetry".format, st.from_regex(r"[A-Za-z0-9]{1,8}", fullmatch=True)
    ),
)

# --- JSON text, built as bytes so that it can hold what no JSON encoder would write ----------

nasty_scalar = st.one_of(
    st.sampled_from(
        [
            b"NaN",
            b"Infinity",
            b"-Infinity",
            b"1e400",
            b"-1e999",
            b"1e-400",
            b"-0",
            b"0.0",
            b"9223372036854775807",
            b"9223372036854775808",
            b"18446744073709551616",
            b"-9223372036854775809",
            b"null",
            b"true",
            b'"\\u0000"',
            b'"a\\u0000b"',
            b'"\\ud800"',
            b'"\\udc00x"',
            b'"\\ud83d\\ude00"',
            b'"\\"\\\\\\/\\b\\f\\n\\r\\t"',
            b'"\xed\xa0\x80"',
            b'"\xff\xfe"',
            b'"\xc3"',
            b'"2026-11-01T10:00:00"',
            b'"9999-12-31T23:59:59-23:59"',
            b'"0001-01-01T00:00:00+23:59"',
            b'"online"',
        ]
    ),
    st.integers(min_value=-(10**450), max_value=10**450).map(lambda i: str(i).encode()),
    st.floats().map(lambda f: repr(f).encode()),
    st.text(max_size=8).map(
        lambda t: ('"' + t.replace("\\", "").replace('"', "") + '"').encode(
            "utf-8", "surrogatepass"
        )
    ),
)
key = st.sampled_from(
    [
        b'"state"',
        b'"credit"',
        b'"firmware"',
        b'"relay"',
        b'"interval_s"',
        b'"ts"',
        b'"type"',
        b'"details"',
        b'"values"',
        b'"quality"',
        b'"1.8.0"',
        b'"k\\u0000"',
        b'"\\ud800"',
    ]
)


def _array(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(children, max_size=4).map(lambda items: b"[" + b",".join(items) + b"]")


def _object(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(st.tuples(key, children), max_size=4).map(
        lambda pairs: b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"
    )


json_text = st.recursive(nasty_scalar, lambda inner: _array(inner) | _object(inner), max_leaves=12)
deep = st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n)
hole = json_text | deep


def _status(credit: bytes, extra: bytes) -> bytes:
    return b'{"state":"online","credit":' + credit + b',"x":' + extra + b"}"


def _event(ts: bytes, kind: bytes, detail: bytes) -> bytes:
    return b'{"ts":' + ts + b',"type":' + kind + b',"details":{"k":' + detail + b"}}"


def _reply(command_id: bytes, reason: bytes, relay: bytes) -> bytes:
    return (
        b'{"command_id":' + command_id + b',"result":"rejected","reason":' + reason
        + b',"ts":"2026-11-01T00:00:00Z","state":{"relay":' + relay + b',"valve":null}}'
    )  # fmt: skip


def _telemetry(ts: bytes, value: bytes) -> bytes:
    return b'{"ts":' + ts + b',"values":{"1.8.0":' + value + b"}}"


GOOD_TS = st.sampled_from([b'"2026-11-01T00:00:00Z"', b'"2026-11-01T00:00:00"', b"1793491200000"])
# Protocol-shaped bodies with fields replaced by something nasty.
shaped = st.one_of(
    st.builds(_status, hole, hole),
    st.builds(_status, st.just(b"1"), hole),
    st.builds(_event, GOOD_TS | hole, st.sampled_from([b'"low_battery"', b'"power_up"']), hole),
    st.builds(_telemetry, GOOD_TS | hole, hole),
    st.builds(
        _reply,
        st.sampled_from([b'"abc-1"', b'""', b'"a|b"']) | hole,
        st.sampled_from([b'"replayed"', b"null"]) | hole,
        st.sampled_from([b'"armed"', b"null"]) | hole,
    ),
)
payload_strategy = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"MG\x01" + b),
    st.from_regex(rb'\A[\[{"0-9a-z:,. \]}-]{0,120}\Z'),
    json_text,
    shaped,
    st.tuples(shaped, st.binary(min_size=1, max_size=3), st.integers(0, 60)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]  # invalid UTF-8 spliced in
    ),
)
meter_topic = st.sampled_from(
    [
        "site/meters/M1/telemetry",
        "site/meters/M1/events",
        "site/meters/M1/status",
        "site/meters/M1/commands/reply",
    ]
)


def check(topic: str, payload: bytes, work: Work) -> None:
    produced = (
        bool(work.readings)
        or bool(work.events)
        or work.status is not None
        or work.reply is not None
    )
    assert produced != (work.dead is not None)
    if work.dead is not None:
        assert work.dead.payload == payload and work.dead.reason
        assert work.dead.reason != INTERNAL_ERROR
        assert "\x00" not in work.dead.topic and "\x00" not in work.dead.detail
        work.dead.topic.encode()  # storable as UTF-8 text
        work.dead.detail.encode()
    assert all(r.channel in CHANNELS for r in work.readings)


@settings(max_examples=500)
@given(topic_strategy, payload_strategy)
def test_every_message_yields_data_or_a_dead_letter(topic: str, payload: bytes) -> None:
    # decode_message itself (not the total MessageDecoder): an unexpected exception fails here.
    check(topic, payload, decode_message(TOPICS, topic, payload, now=NOW))


@settings(max_examples=700)
@given(meter_topic, shaped | json_text)
def test_protocol_shaped_nasty_bodies(topic: str, payload: bytes) -> None:
    check(topic, payload, decode_message(TOPICS, topic, payload, now=NOW))


async def _store(url: str, batch: list[Work]) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(STAGING_DDL)
        await conn.commit()
        await write_batch(conn, batch)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(meter_topic | topic_strategy, shaped | payload_strategy), min_size=1, max_size=25
    )
)
def test_whatever_is_decoded_the_database_accepts(
    database_url: str, messages: list[tuple[str, bytes]]
) -> None:
    """A batch of decoded messages commits whole: nothing reaches PostgreSQL that it refuses."""
    batch = [decode_message(TOPICS, t, p, now=NOW) for t, p in messages]
    asyncio.run(_store(database_url, batch))  # raises StorageRejectedError on a refused value


def test_an_unexpected_exception_is_a_dead_letter_logged_once_per_kind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(payload: bytes, **kwargs: object) -> object:
        raise ZeroDivisionError("a defect met by some input")

    monkeypatch.setattr(consumer, "decode_status", broken)
    counted: list[str] = []
    decode = MessageDecoder(TOPICS, on_internal_error=counted.append)
    with caplog.at_level(logging.ERROR, logger="gateway.ingest.consumer"):
        works = [decode("site/meters/M1/status", b'{"state":"online"}') for _ in range(3)]
        telemetry = decode("site/meters/M1/telemetry", b'{"ts":1793491200000,"values":{"1.8.0":1}}')
    for work in works:
        assert work.dead is not None and work.dead.reason == INTERNAL_ERROR
        assert work.dead.detail.startswith("ZeroDivisionError")
        assert work.dead.payload == b'{"state":"online"}' and work.kind == "status"
    assert counted == ["ZeroDivisionError"] * 3
    assert len([r for r in caplog.records if "ZeroDivisionError" in r.getMessage()]) == 1
    assert telemetry.dead is None and len(telemetry.readings) == 1


def test_the_overflowing_status_is_a_dead_letter_not_an_exception() -> None:
    """Raised OverflowError out of decode_message before; gmqtt swallowed it, never acked."""
    payload = b'{"state":"online","credit":' + b"9" * 400 + b"}"
    work = decode_message(TOPICS, "site/meters/M1/status", payload, now=NOW)
    assert work.dead is not None and work.dead.reason == "bad_json"
