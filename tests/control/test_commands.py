"""Commands to meters end to end: the running gateway signs and publishes them over the real
broker, simulated meters verify and carry them out, and the gateway confirms each from the
meter's own reported state — or says why not."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from firmware_sim.identity import Utility
from gateway.control.commands import order_command
from gateway.control.dispatch import CommandLoop
from gateway.errors import ConnectionLostError
from gateway.http.security import Role
from protocols.commands import CommandAction, sign_command
from tests.control.rig import Customer, meter_fleet, rows, set_policy, wait_online
from tests.firmware_sim.helpers import command_key
from tests.plugins.auth import make_api_key
from tests.plugins.gateway import MqttTestClient, gateway_running, make_settings

pytestmark = pytest.mark.timeout(300)


async def command_state(http: httpx.AsyncClient, meter_id: str, command_id: int) -> dict[str, Any]:
    got = await http.get(f"/meters/{meter_id}/commands")
    assert got.status_code == 200, got.text
    return next(c for c in got.json()["commands"] if c["command_id"] == command_id)


async def settle(
    http: httpx.AsyncClient, meter_id: str, command_id: int, timeout: float = 60
) -> dict[str, Any]:
    """The command once it has ended (confirmed, rejected, unconfirmed or cancelled)."""
    async with asyncio.timeout(timeout):
        while True:
            command = await command_state(http, meter_id, command_id)
            if command["state"] in ("confirmed", "rejected", "unconfirmed", "cancelled"):
                return command
            await asyncio.sleep(0.1)


async def send(
    http: httpx.AsyncClient,
    meter_id: str,
    action: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    return await http.post(
        f"/meters/{meter_id}/commands",
        json={"action": action, "reason": "test", **extra},
        headers=headers,
    )


async def test_manual_commands_are_signed_sent_and_confirmed_from_meter_state(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    customers = [
        Customer("ELEC", Utility.ELECTRICITY),
        Customer("WATER-IND", Utility.WATER, indigent=True),
        Customer("HOSPITAL", Utility.ELECTRICITY, essential=True),
        Customer("DEAF", Utility.ELECTRICITY, deaf=True),
    ]
    await set_policy(database_url, confirm_timeout_s=1, command_retries=1)
    async with meter_fleet(database_url, mqtt_url, topic_prefix, tmp_path, customers) as rig:
        settings = make_settings(
            database_url, mqtt_url, topic_prefix, master_key_file=rig.master_key,
            command_poll_ms=50,
        )  # fmt: skip
        tech = await make_api_key(database_url, Role.TECHNICIAN)
        operator = await make_api_key(database_url, Role.OPERATOR)
        vendor = await make_api_key(database_url, Role.VENDOR)
        async with gateway_running(settings) as handle:
            await wait_online(database_url, list(rig.meters.values()))
            base = f"http://127.0.0.1:{handle.http_port}"
            auth = {"Authorization": f"Bearer {tech}"}
            async with httpx.AsyncClient(base_url=base, headers=auth) as http:
                elec, water = rig.meters["ELEC"], rig.meters["WATER-IND"]
                as_operator = {"Authorization": f"Bearer {operator}"}
                # A technician reads state and restores supply; cutting it needs an operator.
                refused = await send(http, elec, "disconnect")
                assert refused.status_code == 403 and "operator" in refused.text
                # A disconnect is confirmed by the relay the meter reports, not by its reply.
                posted = await send(http, elec, "disconnect", headers=as_operator)
                assert posted.status_code == 202, posted.text
                assert posted.json()["state"] == "planned"
                done = await settle(http, elec, posted.json()["command_id"])
                assert done["state"] == "confirmed", done
                assert done["confirmed_state"]["relay"] == "disconnected"
                assert done["acknowledged_at"] is not None
                [message] = done["messages"]
                assert (message["action"], message["reply_result"]) == ("disconnect", "ok")
                assert rig.devices[elec].meter.relay is not None
                assert rig.devices[elec].meter.relay.value == "disconnected"
                back = await settle(
                    http, elec, (await send(http, elec, "reconnect")).json()["command_id"]
                )
                assert back["confirmed_state"]["relay"] == "connected"
                # Water: restricted, never closed for an indigent account.
                closing = await send(http, water, "close_valve", headers=as_operator)
                assert closing.status_code == 409 and "indigent" in closing.text
                restricting = await send(http, water, "restrict", headers=as_operator)
                restricted = await settle(http, water, restricting.json()["command_id"])
                assert restricted["confirmed_state"]["valve"] == "restricted"
                wrong = await send(http, elec, "restrict", headers=as_operator)
                assert wrong.status_code == 422 and "cannot restrict" in wrong.text
                read = await settle(
                    http, elec, (await send(http, elec, "read_state")).json()["command_id"]
                )
                assert read["state"] == "confirmed"
                # An essential supply is cut only when the operator says so explicitly.
                hospital = rig.meters["HOSPITAL"]
                held = await send(http, hospital, "disconnect", headers=as_operator)
                assert held.status_code == 409 and "essential" in held.text
                forced = await send(
                    http, hospital, "disconnect", headers=as_operator, override_essential=True
                )
                assert forced.status_code == 202
                cut = await settle(http, hospital, forced.json()["command_id"])
                assert cut["confirmed_state"]["relay"] == "disconnected"
                await settle(
                    http, hospital, (await send(http, hospital, "reconnect")).json()["command_id"]
                )
                # A meter that ignores commands: read_state, one retry, then unconfirmed and on
                # the work list.
                deaf = rig.meters["DEAF"]
                ignored = await send(http, deaf, "disconnect", headers=as_operator)
                lost = await settle(http, deaf, ignored.json()["command_id"])
                assert lost["state"] == "unconfirmed", repr(lost)
                # each attempt is followed by a read_state before the gateway concludes
                assert [m["action"] for m in lost["messages"]] == [
                    "disconnect",
                    "read_state",
                    "disconnect",
                    "read_state",
                ]
                assert len({m["message_id"] for m in lost["messages"]}) == 4
                assert all(m["reply_result"] is None for m in lost["messages"])
                worklist = (await http.get("/worklist")).json()
                entry = next(i for i in worklist["items"] if i["meter_id"] == deaf)
                assert [a["kind"] for a in entry["alerts"]] == ["command_unconfirmed"]
                assert rig.devices[deaf].meter.relay is not None
                assert rig.devices[deaf].meter.relay.value == "connected"
                # Without a key, or as a vendor, nothing is sent.
                async with httpx.AsyncClient(base_url=base) as anonymous:
                    nobody = await anonymous.post(
                        f"/meters/{elec}/commands", json={"action": "read_state"}
                    )
                    assert nobody.status_code == 401
                    as_vendor = await anonymous.post(
                        f"/meters/{elec}/commands",
                        json={"action": "disconnect"},
                        headers={"Authorization": f"Bearer {vendor}"},
                    )
                    assert as_vendor.status_code == 403
    audit = await rows(
        database_url,
        "SELECT action, outcome FROM audit_log WHERE action LIKE 'command.%%' ORDER BY id",
    )
    assert ("command.order", "planned") in audit
    assert ("command.reply", "ok") in audit
    assert ("command.finish", "confirmed") in audit
    assert ("command.finish", "unconfirmed") in audit


async def test_forged_and_replayed_commands_are_refused_by_the_meter_and_recorded(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    await set_policy(database_url)
    async with meter_fleet(
        database_url, mqtt_url, topic_prefix, tmp_path, [Customer("A", Utility.ELECTRICITY)]
    ) as rig:
        meter_id = rig.meters["A"]
        settings = make_settings(
            database_url, mqtt_url, topic_prefix, master_key_file=rig.master_key,
            command_poll_ms=50,
        )  # fmt: skip
        tech = await make_api_key(database_url, Role.TECHNICIAN)
        async with (
            gateway_running(settings) as handle,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{handle.http_port}",
                headers={"Authorization": f"Bearer {tech}"},
            ) as http,
            MqttTestClient(mqtt_url) as attacker,
        ):
            await wait_online(database_url, [meter_id])
            operator = await make_api_key(database_url, Role.OPERATOR)
            posted = await send(
                http, meter_id, "disconnect", headers={"Authorization": f"Bearer {operator}"}
            )
            done = await settle(http, meter_id, posted.json()["command_id"])
            assert done["state"] == "confirmed"
            # Replayed: the gateway's own signed message, published again by someone else.
            [sent] = await rows(
                database_url,
                "SELECT payload FROM command_messages WHERE command_id = %s",
                done["command_id"],
            )
            await attacker.publish_all([(rig.topics.commands(meter_id), bytes(sent[0]))])
            # Forged: a reconnect signed with a key that is not the meter's.
            forged = sign_command(
                command_key(meter_id), meter_id=meter_id, command_id=f"f{uuid.uuid4().hex}",
                action=CommandAction.RECONNECT, issued_at=datetime.now(UTC),
                ttl=timedelta(minutes=10), nonce=uuid.uuid4().hex,
            )  # fmt: skip
            await attacker.publish_all([(rig.topics.commands(meter_id), forged.to_json())])
            async with asyncio.timeout(30):
                while True:
                    replies = await rows(
                        database_url,
                        "SELECT message_id, result, reason, outcome FROM command_replies"
                        " WHERE meter_id = %s AND applied_at IS NOT NULL ORDER BY reply_id",
                        meter_id,
                    )
                    if len(replies) >= 3:
                        break
                    await asyncio.sleep(0.1)
            assert replies[1:] == [
                (
                    done["messages"][0]["message_id"],
                    "rejected",
                    "replayed",
                    "command already confirmed",
                ),
                (forged.id, "rejected", "bad_signature", "unsolicited"),
            ]
            # The meter did neither: its relay stays as the gateway left it.
            assert rig.devices[meter_id].meter.relay is not None
            assert rig.devices[meter_id].meter.relay.value == "disconnected"
            after = await command_state(http, meter_id, done["command_id"])
            assert after["state"] == "confirmed"
    audit = await rows(
        database_url,
        "SELECT outcome, detail->>'reason' FROM audit_log"
        " WHERE action = 'command.reply.unsolicited'",
    )
    assert audit == [("rejected", "bad_signature")]


async def test_a_message_published_but_not_recorded_goes_out_again_and_counts_once(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The crash window itself: the broker took the message, the gateway died before noting it.

    The next pass publishes the same bytes again; the meter, which carried the first out,
    refuses the repeat as ``replayed``; the command is confirmed once, from the meter's state.
    """
    await set_policy(database_url)
    async with meter_fleet(
        database_url, mqtt_url, topic_prefix, tmp_path, [Customer("C", Utility.ELECTRICITY)]
    ) as rig:
        meter_id = rig.meters["C"]
        # The service ingests (replies, status) but runs no command loop: the test runs its own.
        settings = make_settings(
            database_url,
            mqtt_url,
            topic_prefix,
            parts="ingest,http",
            master_key_file=rig.master_key,
        )
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, open=False)
        async with gateway_running(settings), MqttTestClient(mqtt_url) as broker:
            await pool.open()
            crashes = [True]

            async def publish(topic: str, payload: bytes) -> None:
                await broker.client.publish(topic, payload, qos=1)
                if crashes:
                    crashes.pop()
                    raise ConnectionLostError("the process died after the PUBACK")

            loop = CommandLoop(pool, rig.keystore, publish, rig.topics)
            try:
                await wait_online(database_url, [meter_id])
                async with pool.connection() as conn, conn.transaction():
                    command_id = await order_command(
                        conn, meter_id=meter_id, action=CommandAction.DISCONNECT,
                        origin="manual", requested_by="test",
                    )  # fmt: skip
                await loop.tick()
                [noted] = await rows(
                    database_url,
                    "SELECT published_at, publishes FROM command_messages WHERE command_id = %s",
                    command_id,
                )
                assert noted == (None, 0)  # the broker has it; the gateway does not know
                state = "SELECT state FROM meter_commands WHERE command_id = %s"
                async with asyncio.timeout(30):
                    while (await rows(database_url, state, command_id)) != [("confirmed",)]:
                        await loop.tick()
                        await asyncio.sleep(0.05)
            finally:
                await pool.close()
        replies = await rows(
            database_url,
            "SELECT result, reason FROM command_replies WHERE meter_id = %s ORDER BY reply_id",
            meter_id,
        )
        # The meter carried it out once. Whether the next pass published it again first (the
        # meter then refused the repeat as replayed) or the meter's reply came first (proof
        # enough that it went out) depends on timing; either way nothing was signed twice.
        assert replies.count(("ok", None)) == 1
        assert set(replies) <= {("ok", None), ("rejected", "replayed")}, replies
        messages = await rows(
            database_url, "SELECT publishes FROM command_messages WHERE command_id = %s", command_id
        )
        assert messages == [(1,)]  # one signed message, carried out once
        assert rig.devices[meter_id].meter.relay is not None
        assert rig.devices[meter_id].meter.relay.value == "disconnected"
