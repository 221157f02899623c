"""The fleet against the real Mosquitto: reporting, keypad tokens, commands, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import timedelta

import gmqtt

from firmware_sim.clock import ManualClock
from firmware_sim.fleet import FleetSpec, GroundTruth, build_fleet, run_fleet
from firmware_sim.identity import Transport, Utility, make_identity
from firmware_sim.mqtt_link import parse_broker_url
from protocols.commands import CommandAction, sign_command
from protocols.topics import Topics
from tests.firmware_sim.helpers import START, command_key
from tests.firmware_sim.test_control import _token


class Listener:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = gmqtt.Client(f"fwsim-test-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message

    def _on_message(
        self, client: object, topic: str, payload: bytes, qos: int, props: object
    ) -> int:
        self.messages.append((topic, bytes(payload)))
        return 0

    async def wait(
        self, pred: Callable[[str, dict[str, object] | list[object]], bool], timeout: float = 10.0
    ) -> dict[str, object]:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for topic, payload in self.messages[seen:]:
                    seen += 1
                    try:
                        body = json.loads(payload)
                    except ValueError:
                        continue
                    if pred(topic, body):
                        return body if isinstance(body, dict) else {"items": body}
                await asyncio.sleep(0.02)


async def test_fleet_reports_takes_tokens_obeys_commands(
    mqtt_url: str, topic_prefix: str, tmp_path: object
) -> None:
    seed = 40 + uuid.uuid4().int % 50  # distinct client ids from other runs
    elec = make_identity(
        seed, 0, transport=Transport.MQTT, utility=Utility.ELECTRICITY, prepaid=True
    )
    water = make_identity(seed, 1, transport=Transport.MQTT, utility=Utility.WATER, prepaid=True)
    spec = FleetSpec(seed=seed, meters=2)
    devices = build_fleet(spec, START, identities=[elec, water])
    clock = ManualClock(START)
    topics = Topics(topic_prefix)
    listener = Listener()
    await listener.client.connect("127.0.0.1", 1883)
    listener.client.subscribe(f"{topic_prefix}#", qos=1)
    stop = asyncio.Event()
    truth = GroundTruth(None)
    fleet = asyncio.create_task(
        run_fleet(
            devices,
            clock=clock,
            stop=stop,
            truth=truth,
            broker=parse_broker_url(mqtt_url),
            topics=topics,
            per_connection=1,
            session_expiry=120,
            link_prefix=f"t{seed}",
        )
    )
    try:
        eid = elec.meter_id
        status = await listener.wait(
            lambda t, b: (
                t == topics.status(eid) and isinstance(b, dict) and b.get("state") == "online"
            )
        )
        assert status["relay"] == "connected"
        clock.advance(3600)
        tele = await listener.wait(lambda t, b: t == topics.telemetry(water.meter_id))
        assert "24.2.1" in tele["values"]  # type: ignore[operator]
        await listener.wait(
            lambda t, b: (
                t == topics.telemetry(eid)
                and isinstance(b, dict)
                and b["ts"] == "2026-01-05T01:00:00.000Z"
            )
        )

        credit_before = devices[0].meter.credit
        assert credit_before is not None
        token = _token(devices[0], tenths=100, minute=30)
        listener.client.publish(
            topics.keypad(eid), json.dumps({"id": "v-1", "token": token}), qos=1
        )
        event = await listener.wait(
            lambda t, b: (
                t == topics.events(eid)
                and isinstance(b, dict)
                and b.get("type") == "token_accepted"
            )
        )
        assert event["details"]["token_id"] == "v-1"  # type: ignore[index]
        status = await listener.wait(
            lambda t, b: (
                t == topics.status(eid)
                and isinstance(b, dict)
                and b.get("credit", 0) >= credit_before + 9.9
            )
        )  # type: ignore[operator]
        assert status["credit"] == round(credit_before + 10.0, 3)
        listener.client.publish(
            topics.keypad(eid), json.dumps({"id": "v-2", "token": token}), qos=1
        )
        event = await listener.wait(
            lambda t, b: (
                t == topics.events(eid)
                and isinstance(b, dict)
                and b.get("type") == "token_rejected"
            )
        )
        assert event["details"] == {"token_id": "v-2", "reason": "tid_reused"}

        def command(action: CommandAction, cid: str, key: bytes) -> bytes:
            return sign_command(
                key,
                meter_id=eid,
                command_id=cid,
                action=action,
                issued_at=clock.now(),
                ttl=timedelta(minutes=10),
                nonce=uuid.uuid4().hex[:16],
            ).to_json()

        listener.client.publish(
            topics.commands(eid), command(CommandAction.DISCONNECT, "forged", bytes(32)), qos=1
        )
        reply = await listener.wait(lambda t, b: t == topics.command_reply(eid))
        assert (reply["command_id"], reply["result"], reply["reason"]) == (
            "forged",
            "rejected",
            "bad_signature",
        )
        good = command(CommandAction.DISCONNECT, "real", command_key(eid))
        listener.client.publish(topics.commands(eid), good, qos=1)
        reply = await listener.wait(
            lambda t, b: (
                t == topics.command_reply(eid) and isinstance(b, dict) and b["command_id"] == "real"
            )
        )
        assert reply["result"] == "ok"
        await listener.wait(
            lambda t, b: (
                t == topics.status(eid) and isinstance(b, dict) and b.get("relay") == "disconnected"
            )
        )
        listener.client.publish(topics.commands(eid), good, qos=1)  # replay
        reply = await listener.wait(
            lambda t, b: (
                t == topics.command_reply(eid)
                and isinstance(b, dict)
                and b.get("reason") == "replayed"
            )
        )
        assert reply["state"] == {"relay": "disconnected", "valve": None}
    finally:
        stop.set()
        await asyncio.wait_for(fleet, 20)
    offline = await listener.wait(
        lambda t, b: (
            t == topics.status(water.meter_id)
            and isinstance(b, dict)
            and b.get("state") == "offline"
        )
    )
    assert offline["state"] == "offline"
    await listener.client.disconnect()
