"""kill -9 of the gateway while it sends commands: nothing lost, nothing carried out twice.

Commands keep being ordered while the gateway process dies and comes back. Each command's
signed message is committed before it is published; whatever the kill interrupted is published
again with the same bytes after the restart, and a meter that had it already refuses the repeat
as ``replayed``. So every command ends confirmed, with one signed message each, and every
meter carried its command out exactly once.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from firmware_sim.identity import Utility
from gateway.control.commands import order_command
from gateway.dev.services import free_port
from protocols.commands import CommandAction
from tests.control.rig import Customer, meter_fleet, set_policy, wait_online
from tests.gateway.test_reliability import gateway_env, start_gateway_process
from tests.plugins.gateway import wait_for_value

pytestmark = pytest.mark.timeout(600)

METERS = 300


async def scalar(url: str, sql: str) -> Any:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(sql)
        row = await cur.fetchone()
        return row[0] if row else None


async def at_least(url: str, sql: str, wanted: int) -> bool:
    return int(await scalar(url, sql)) >= wanted


async def order_all(url: str, meter_ids: list[str]) -> None:
    """Order one disconnect per meter, a few at a time, as an operator's tools would."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for n, meter_id in enumerate(meter_ids):
            async with conn.transaction():
                await order_command(
                    conn,
                    meter_id=meter_id,
                    action=CommandAction.DISCONNECT,
                    origin="manual",
                    requested_by="crash-test",
                )
            if n % 10 == 9:
                await asyncio.sleep(0.05)


async def test_kill_9_mid_run_loses_and_duplicates_no_command(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    customers = [Customer(f"K{n:04d}", Utility.ELECTRICITY) for n in range(METERS)]
    # Long enough that no command is retried: any second message would be a duplicate.
    await set_policy(database_url, confirm_timeout_s=600, command_ttl_s=900)
    async with meter_fleet(
        database_url, mqtt_url, topic_prefix, tmp_path, customers, per_connection=50
    ) as rig:
        env = gateway_env(database_url, mqtt_url, topic_prefix, free_port())
        env.update(
            GATEWAY_MASTER_KEY_FILE=str(rig.master_key),
            GATEWAY_COMMAND_POLL_MS="20",
            GATEWAY_MQTT_CLIENT_ID=f"gw-{topic_prefix.strip('/')}"[:60],
        )
        log = tmp_path / "gateway.log"
        proc = await start_gateway_process(env, log)
        try:
            meter_ids = list(rig.meters.values())
            await wait_online(database_url, meter_ids, timeout=120)
            ordering = asyncio.create_task(order_all(database_url, meter_ids))
            confirmed = "SELECT count(*) FROM meter_commands WHERE state = 'confirmed'"
            some = await wait_for_value(
                lambda: at_least(database_url, confirmed, 20), True, timeout=120
            )
            assert some, "no command was confirmed before the kill"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            at_kill = await scalar(database_url, confirmed)
            await ordering  # orders keep coming while the gateway is down
            assert 0 < at_kill < METERS, "the kill did not land mid-run"
            assert "stopping" not in log.read_text()
            proc = await start_gateway_process(env, log)
            assert await wait_for_value(
                lambda: at_least(database_url, confirmed, METERS), True, timeout=180
            )
        finally:
            proc.kill()
            proc.wait(10)
        states = await scalar(database_url, "SELECT array_agg(DISTINCT state) FROM meter_commands")
        assert states == ["confirmed"]
        # One signed message per command: nothing was signed twice …
        assert await scalar(database_url, "SELECT count(*) FROM command_messages") == METERS
        # … and every meter carried its command out once; a message published again after
        # the kill (if the kill fell between publishing and recording it) was refused.
        ok = "SELECT count(*) FROM command_replies WHERE result = 'ok'"
        assert await scalar(database_url, ok) == METERS
        # Whatever else the meters answered was the refusal of a repeat of one of ours.
        others = await scalar(
            database_url,
            "SELECT count(*) FROM command_replies r WHERE result <> 'ok' AND (reason <> 'replayed'"
            " OR NOT EXISTS (SELECT 1 FROM command_messages m WHERE m.message_id = r.message_id))",
        )
        assert others == 0
        assert all(
            d.meter.relay is not None and d.meter.relay.value == "disconnected"
            for d in rig.devices.values()
        )
