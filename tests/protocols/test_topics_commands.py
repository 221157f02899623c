"""Topics (§2), status (§6) and signed commands (§7)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from protocols import (
    CommandAction,
    PayloadError,
    RejectReason,
    TopicError,
    TopicKind,
    Topics,
    check_command,
    decode_command,
    decode_status,
    sign_command,
)
from protocols.commands import Command, CommandReply, decode_reply
from protocols.errors import UsageError

KEY = bytes(range(32))
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_topics_build_and_parse() -> None:
    topics = Topics("site-a/")
    assert topics.telemetry("SN-001") == "site-a/meters/SN-001/telemetry"
    assert topics.parse("site-a/meters/SN-001/commands/reply").kind is TopicKind.COMMAND_REPLY
    parsed = topics.parse("site-a/concentrators/dc_7/telemetry")
    assert (parsed.kind, parsed.device_id) == (TopicKind.CONCENTRATOR_TELEMETRY, "dc_7")
    assert topics.filter(TopicKind.EVENTS) == "site-a/meters/+/events"


@pytest.mark.parametrize(
    "topic",
    [
        "meters/x/telemetry",
        "site-a/meters/bad id/telemetry",
        "site-a/meters/" + "x" * 65 + "/events",
        "site-a/meters/M1/other",
        "site-a/meters/M1",
    ],
)
def test_foreign_topics_are_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics("site-a/").parse(topic)


def test_prefix_must_end_with_slash() -> None:
    with pytest.raises(UsageError):
        Topics("site-a")


def test_status_accepts_bare_words_and_rejects_unknown_states() -> None:
    assert decode_status(b"offline").online is False
    assert decode_status(b'{"state":"online","relay":"armed"}').relay == "armed"
    for bad in (b'{"state":"maybe"}', b'{"state":"online","relay":["x"]}', b"\x00"):
        with pytest.raises(PayloadError):
            decode_status(bad)


def signed(**overrides: object):
    fields = dict(
        meter_id="M1",
        command_id="c-1",
        action=CommandAction.DISCONNECT,
        issued_at=NOW,
        ttl=timedelta(minutes=10),
        nonce="00112233aabbccdd",
    )
    fields.update(overrides)
    return sign_command(KEY, **fields)  # type: ignore[arg-type]


def test_authentic_command_is_accepted_after_a_json_round_trip() -> None:
    cmd = decode_command(signed().to_json(), meter_id="M1")
    assert cmd.expires_at == "2026-11-23T09:10:00.000Z"
    assert check_command(cmd, key=KEY, now=NOW + timedelta(seconds=5), seen=set()) is None


def test_forged_stale_and_replayed_commands_are_rejected() -> None:
    cmd = signed()
    assert check_command(cmd, key=bytes(32), now=NOW, seen=set()) is RejectReason.BAD_SIGNATURE
    other_meter = decode_command(cmd.to_json(), meter_id="M2")
    assert check_command(other_meter, key=KEY, now=NOW, seen=set()) is RejectReason.BAD_SIGNATURE
    assert (
        check_command(cmd, key=KEY, now=NOW + timedelta(minutes=10), seen=set())
        is RejectReason.EXPIRED
    )
    assert (
        check_command(cmd, key=KEY, now=NOW - timedelta(minutes=6), seen=set())
        is RejectReason.NOT_YET_VALID
    )
    assert check_command(cmd, key=KEY, now=NOW, seen={"c-1"}) is RejectReason.REPLAYED


def test_malformed_command_body_is_a_payload_error() -> None:
    for body in (b"[]", b"{}", b'{"id": 1}', b"\xff"):
        with pytest.raises(PayloadError):
            decode_command(body, meter_id="M1")


def _resplit_pair() -> tuple[Command, Command]:
    """Two field assignments with the same ``|``-joined signed text, and that text's MAC."""
    issued, expires = "2026-11-23T09:00:00.000Z", "2026-11-23T09:10:00.000Z"
    first = Command("M1", "c-1", "disconnect", issued, expires, "n|x", sig="")
    second = Command("M1", "c-1", "disconnect", issued, f"{expires}|n", "x", sig="")
    assert first.signed_text() == second.signed_text()  # the ambiguity being closed
    sig = hmac.new(KEY, first.signed_text(), hashlib.sha256).hexdigest()
    return replace(first, sig=sig), replace(second, sig=sig)


def test_a_resplit_signature_is_rejected_on_the_meter() -> None:
    for cmd in _resplit_pair():
        assert check_command(cmd, key=KEY, now=NOW, seen=set()) is RejectReason.MALFORMED
        with pytest.raises(PayloadError):
            decode_command(cmd.to_json(), meter_id="M1")
    id_split = Command("M1", "c|disconnect", "reconnect", "a", "b", "n", sig="")
    assert check_command(id_split, key=KEY, now=NOW, seen=set()) is RejectReason.MALFORMED


@pytest.mark.parametrize(
    "overrides",
    [{"nonce": "n|x"}, {"command_id": "c|1"}, {"command_id": ""}, {"nonce": "ünï"},
     {"nonce": "x" * 129}, {"meter_id": "M|1"}],
)  # fmt: skip
def test_gateway_refuses_to_sign_ambiguous_fields(overrides: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        signed(**overrides)


def test_ids_and_nonces_of_the_allowed_alphabet_still_verify() -> None:
    cmd = signed(command_id="Cmd_2026-11-23_0001", nonce="a" * 128)
    decoded = decode_command(cmd.to_json(), meter_id="M1")
    assert check_command(decoded, key=KEY, now=NOW, seen=set()) is None


def test_a_reply_round_trips_and_strict_decoding_refuses_the_rest() -> None:
    reply = CommandReply("abc-1", "rejected", "replayed", NOW, "connected", None)
    assert decode_reply(reply.to_json()) == reply
    # a reply to a malformed command carries an empty id
    assert (
        decode_reply(
            b'{"command_id":"","result":"rejected","reason":"malformed",'
            b'"ts":"2026-12-01T09:00:00Z","state":{"relay":null,"valve":"open"}}'
        ).valve
        == "open"
    )
    bad = [
        b"[]",
        b'{"command_id":"a|b","result":"ok","reason":null,"ts":"2026-12-01T09:00:00Z"}',
        b'{"command_id":"a","result":"maybe","reason":null,"ts":"2026-12-01T09:00:00Z"}',
        b'{"command_id":"a","result":"ok","reason":"because","ts":"2026-12-01T09:00:00Z"}',
        b'{"command_id":"a","result":"ok","reason":null,"ts":"2026-12-01T09:00:00"}',
        b'{"command_id":"a","result":"ok","reason":null,"ts":"2026-12-01T09:00:00Z",'
        b'"state":{"relay":"melted"}}',
        b'{"command_id":"a","result":"ok","reason":null,"ts":NaN}',
        b'{"command_id":"a\\u0000","result":"ok","reason":null,"ts":"2026-12-01T09:00:00Z"}',
        b"\xff",
        b" " * 5000,
    ]
    for payload in bad:
        with pytest.raises(PayloadError):
            decode_reply(payload)
