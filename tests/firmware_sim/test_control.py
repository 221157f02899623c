"""Keypad tokens and signed commands, on the pure device (no broker)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest

from firmware_sim.device import Device, Output
from firmware_sim.identity import Utility
from protocols.commands import CommandAction, sign_command
from protocols.timestamps import to_rfc3339
from protocols.topics import TopicKind
from tests.firmware_sim.helpers import DEV_VENDING_KEY, START, command_key, make_device
from tokens.codec import encode
from tokens.keys import Dkga, KeyParameters, KeyType, VendingKey, derive_decoder_key
from tokens.meter_number import MeterNumber
from tokens.records import Medium, TransferCredit
from tokens.tid import BaseDate, tid_from_datetime


def _token(
    device: Device,
    tenths: int,
    minute: int,
    vending_key: bytes = DEV_VENDING_KEY,
    medium: Medium | None = None,
) -> str:
    """A credit token as a vendor would generate it, from the meter's documented parameters."""
    params = KeyParameters(
        meter=MeterNumber.from_pan(device.meter.identity.pan),
        key_type=KeyType.UNIQUE,
        sgc="123456",
        ti=1,
        krn=1,
        base_date=BaseDate.Y2014,
    )
    key = derive_decoder_key(VendingKey(Dkga.DKGA02, vending_key), params)
    if medium is None:
        medium = Medium.ELECTRICITY if device.meter.is_electric else Medium.WATER
    tid = tid_from_datetime(START + timedelta(minutes=minute), BaseDate.Y2014)
    return encode(TransferCredit(medium=medium, tenths=tenths, tid=tid, rnd=3), key)


def _events(out: Output) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for msg in out.messages:
        if msg.kind is TopicKind.EVENTS:
            body = json.loads(msg.payload)
            found += body if isinstance(body, list) else [body]
    return found


def _status(out: Output) -> dict[str, object]:
    (status,) = [json.loads(m.payload) for m in out.messages if m.kind is TopicKind.STATUS]
    assert isinstance(status, dict)
    return status


def _keypad(device: Device, token: str, request_id: str) -> Output:
    body = json.dumps({"id": request_id, "token": token}).encode()
    return device.on_keypad(body, START + timedelta(minutes=10))


def test_token_raises_credit_and_replay_is_rejected() -> None:
    device = make_device(Utility.ELECTRICITY, credit=10.0)
    token = _token(device, tenths=255, minute=5)  # 25.5 kWh
    out = _keypad(device, token, "vend-1")
    (event,) = _events(out)
    assert event["type"] == "token_accepted"
    assert event["details"]["token_id"] == "vend-1"  # type: ignore[index]
    assert _status(out)["credit"] == pytest.approx(35.5)
    assert device.meter.credit == pytest.approx(35.5)

    replay = _keypad(device, token, "vend-1-again")
    (event,) = _events(replay)
    assert event["type"] == "token_rejected"
    assert event["details"] == {"token_id": "vend-1-again", "reason": "tid_reused"}
    assert device.meter.credit == pytest.approx(35.5)


def test_credit_for_another_medium_is_rejected_and_keeps_its_tid_usable() -> None:
    device = make_device(Utility.ELECTRICITY, credit=10.0)
    gas = _token(device, tenths=100, minute=5, medium=Medium.GAS)
    (event,) = _events(_keypad(device, gas, "v-gas"))
    assert event["type"] == "token_rejected"
    assert event["details"]["reason"] == "wrong_medium"  # type: ignore[index]
    assert device.meter.credit == pytest.approx(10.0)
    # The refused token did not use up its TID: the right token for that minute still works.
    (event,) = _events(_keypad(device, _token(device, tenths=100, minute=5), "v-ok"))
    assert event["type"] == "token_accepted"
    assert device.meter.credit == pytest.approx(20.0)


def test_water_token_and_wrong_key_and_garbage() -> None:
    device = make_device(Utility.WATER, credit=0.0)
    assert device.meter.valve.value == "restricted"  # type: ignore[union-attr]
    wrong = _token(device, tenths=50, minute=6, vending_key=bytes.fromhex("0123456789abcdef"))
    (event,) = _events(_keypad(device, wrong, "v-wrong"))
    assert event["type"] == "token_rejected"
    assert event["details"]["reason"] == "crc_mismatch"  # type: ignore[index]
    assert device.meter.credit == 0.0

    out = _keypad(device, _token(device, tenths=50, minute=7), "v-ok")
    kinds = [e["type"] for e in _events(out)]
    assert kinds == ["token_accepted", "valve_opened"]  # credit restores supply
    assert _status(out)["valve"] == "open"
    assert device.meter.credit == pytest.approx(5.0)

    out = device.on_keypad(b"{not json", START)
    (event,) = _events(out)
    assert event["type"] == "token_rejected" and event["details"]["reason"] == "malformed"  # type: ignore[index]


def _command(
    device: Device,
    action: CommandAction,
    *,
    key: bytes | None = None,
    command_id: str = "c-1",
    nonce: str = "00112233aabbccdd",
    issued_offset: timedelta = timedelta(0),
    ttl: timedelta = timedelta(minutes=10),
) -> bytes:
    meter_id = device.meter_id
    cmd = sign_command(
        key if key is not None else command_key(meter_id),
        meter_id=meter_id,
        command_id=command_id,
        action=action,
        issued_at=START + timedelta(hours=1) + issued_offset,
        ttl=ttl,
        nonce=nonce,
    )
    return cmd.to_json()


def _reply(out: Output) -> dict[str, object]:
    (reply,) = [json.loads(m.payload) for m in out.messages if m.kind is TopicKind.COMMAND_REPLY]
    assert isinstance(reply, dict)
    return reply


NOW = START + timedelta(hours=1, minutes=1)


def test_authentic_command_changes_relay_forged_and_replayed_do_not() -> None:
    device = make_device(Utility.ELECTRICITY)
    forged = _command(device, CommandAction.DISCONNECT, key=bytes(32))
    reply = _reply(device.on_command(forged, NOW))
    assert reply["result"] == "rejected" and reply["reason"] == "bad_signature"
    assert device.meter.relay.value == "connected"  # type: ignore[union-attr]

    body = _command(device, CommandAction.DISCONNECT)
    out = device.on_command(body, NOW)
    reply = _reply(out)
    assert reply["result"] == "ok" and reply["reason"] is None
    assert reply["state"] == {"relay": "disconnected", "valve": None}
    assert _status(out)["relay"] == "disconnected"
    assert "relay_opened" in [e["type"] for e in _events(out)]
    later = device.meter.step(NOW + timedelta(hours=1)).readings
    assert later and all(r.values["96.3.10"] == 0.0 and r.values["1.7.0"] == 0.0 for r in later)

    # Replay of the same signed reconnect-less body: rejected, relay untouched.
    reply = _reply(device.on_command(body, NOW + timedelta(minutes=2)))
    assert reply["result"] == "rejected" and reply["reason"] == "replayed"

    # Tampered action keeps the old signature: rejected.
    tampered = json.loads(body)
    tampered["action"] = "reconnect"
    reply = _reply(device.on_command(json.dumps(tampered).encode(), NOW))
    assert reply["reason"] == "bad_signature"
    assert device.meter.relay.value == "disconnected"  # type: ignore[union-attr]

    again = _command(device, CommandAction.RECONNECT, command_id="c-2", nonce="ffee")
    reply = _reply(device.on_command(again, NOW + timedelta(minutes=3)))
    assert reply["result"] == "ok" and reply["state"]["relay"] == "connected"  # type: ignore[index]


@pytest.mark.parametrize(
    ("offset", "ttl", "reason"),
    [
        (timedelta(minutes=-30), timedelta(minutes=10), "expired"),
        (timedelta(minutes=20), timedelta(minutes=30), "not_yet_valid"),
    ],
)
def test_stale_or_future_command_rejected(offset: timedelta, ttl: timedelta, reason: str) -> None:
    device = make_device(Utility.ELECTRICITY)
    body = _command(device, CommandAction.DISCONNECT, issued_offset=offset, ttl=ttl)
    reply = _reply(device.on_command(body, NOW))
    assert reply["result"] == "rejected" and reply["reason"] == reason
    assert device.meter.relay.value == "connected"  # type: ignore[union-attr]


def test_water_actions_and_inapplicable_and_malformed() -> None:
    water = make_device(Utility.WATER)
    reply = _reply(water.on_command(_command(water, CommandAction.RESTRICT), NOW))
    assert reply["state"] == {"relay": None, "valve": "restricted"}
    reply = _reply(
        water.on_command(_command(water, CommandAction.DISCONNECT, command_id="x", nonce="aa"), NOW)
    )
    assert reply["reason"] == "not_applicable"
    elec = make_device(Utility.ELECTRICITY)
    reply = _reply(elec.on_command(_command(elec, CommandAction.RESTRICT), NOW))
    assert reply["reason"] == "not_applicable"
    reply = _reply(elec.on_command(b'{"id": "m-1", "action": 5}', NOW))
    assert reply == {**reply, "command_id": "m-1", "result": "rejected", "reason": "malformed"}


def test_arm_reconnect_waits_for_the_button() -> None:
    device = make_device(Utility.ELECTRICITY)
    device.on_command(_command(device, CommandAction.DISCONNECT), NOW)
    out = device.on_command(
        _command(device, CommandAction.ARM_RECONNECT, command_id="c-9", nonce="99"), NOW
    )
    assert _reply(out)["state"]["relay"] == "armed"  # type: ignore[index]
    assert device.meter.values["96.3.10"] == 2.0
    out = device.press_button(NOW + timedelta(seconds=30))
    assert _status(out)["relay"] == "connected"


def test_command_with_a_separator_in_id_or_nonce_is_rejected_before_its_signature() -> None:
    """A ``|`` in ``id`` or ``nonce`` would let a signature be re-split into other fields."""
    device = make_device(Utility.ELECTRICITY)
    meter_id = device.meter_id
    issued = to_rfc3339(START + timedelta(hours=1))
    expires = to_rfc3339(START + timedelta(hours=1, minutes=10))
    # Signed as the gateway would have before ids and nonces were restricted ...
    text = f"v1|{meter_id}|c-1|disconnect|{issued}|{expires}|n|x".encode()
    sig = hmac.new(command_key(meter_id), text, hashlib.sha256).hexdigest()
    for body in (
        {"id": "c-1", "action": "disconnect", "issued_at": issued, "expires_at": expires,
         "nonce": "n|x", "sig": sig},
        # ... and the same signature over a re-split of the same text.
        {"id": "c-1", "action": "disconnect", "issued_at": issued,
         "expires_at": f"{expires}|n", "nonce": "x", "sig": sig},
        {"id": "c|1", "action": "disconnect", "issued_at": issued, "expires_at": expires,
         "nonce": "n", "sig": sig},
    ):  # fmt: skip
        reply = _reply(device.on_command(json.dumps(body).encode(), NOW))
        assert (reply["result"], reply["reason"]) == ("rejected", "malformed")
        assert "|" not in str(reply["command_id"])
        assert device.meter.relay.value == "connected"  # type: ignore[union-attr]
