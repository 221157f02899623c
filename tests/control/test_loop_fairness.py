"""The command loop at scale: a pass handles at most ``batch`` commands of each kind, and commands
waiting on silent meters must not keep it from the others.

The loop runs here pass by pass (``tick``) on the real database with a small batch; meters
report their state through the ingest writer, as a status message would.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.control.commands import order_command
from gateway.control.dispatch import CommandLoop, LoopOptions
from gateway.ingest.work import MeterStatus, Work
from gateway.ingest.writer import write_batch
from gateway.keystore import SoftwareKeyStore
from protocols.commands import CommandAction
from protocols.topics import Topics
from tests.control.rig import master_key_file, set_policy

pytestmark = pytest.mark.timeout(120)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Published:
    def __init__(self) -> None:
        self.topics: list[str] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.topics.append(topic)


async def meters_with_keys(url: str, keystore: SoftwareKeyStore, count: int) -> list[str]:
    ids = [f"9{n:010d}" for n in range(count)]
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for meter_id in ids:
            await conn.execute(
                "INSERT INTO meters (meter_id, utility, payment, verified, online)"
                " VALUES (%s, 'electricity', 'postpaid', true, true)",
                (meter_id,),
            )
            await keystore.ensure_command_key(conn, meter_id)
        await conn.commit()
    return ids


async def states(url: str) -> list[tuple[str, str]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT meter_id, state FROM meter_commands ORDER BY command_id")
        return [(str(m), str(s)) for m, s in await cur.fetchall()]


async def report_relay(pool: AsyncConnectionPool[Any], meter_id: str, relay: str) -> None:
    """The meter's status message, stored as the ingest stores it."""
    status = MeterStatus(meter_id, True, {"state": "online", "relay": relay, "valve": None})
    async with pool.connection() as conn:
        await write_batch(conn, [Work(topic="status", payload=b"", status=status)])


async def test_a_command_is_confirmed_while_batches_wait_on_silent_meters(
    database_url: str, tmp_path: Path
) -> None:
    await set_policy(database_url)
    keystore = SoftwareKeyStore(master_key_file(tmp_path))
    *silent, answering = await meters_with_keys(database_url, keystore, 4)
    published = Published()
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        loop = CommandLoop(pool, keystore, published, Topics("t/"), LoopOptions(batch=1))
        async with pool.connection() as conn, conn.transaction():
            for meter_id in [*silent, answering]:
                await order_command(
                    conn,
                    meter_id=meter_id,
                    action=CommandAction.DISCONNECT,
                    origin="manual",
                    requested_by="test",
                )
        for _ in range(4):
            await loop.tick()
        assert len(published.topics) == 4
        assert [s for _, s in await states(database_url)] == ["sent"] * 4
        # Only the last meter carries its command out; the three before it (three batches)
        # stay silent, as meters off the network or ignoring commands do.
        await report_relay(pool, answering, "disconnected")
        for _ in range(3):
            await loop.tick()
        assert await states(database_url) == [
            *((m, "sent") for m in silent),
            (answering, "confirmed"),
        ]


async def report_online(pool: AsyncConnectionPool[Any], meter_ids: list[str], online: bool) -> None:
    async with pool.connection() as conn:
        await write_batch(
            conn,
            [
                Work(topic="status", payload=b"", status=MeterStatus(m, online, None))
                for m in meter_ids
            ],
        )


async def messages(url: str, meter_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM command_messages WHERE meter_id = %s", (meter_id,)
        )
        got = await cur.fetchone()
        return int(got[0]) if got else 0


async def test_an_expired_order_outside_the_window_does_not_hold_up_the_others(
    database_url: str, tmp_path: Path
) -> None:
    await set_policy(database_url, confirm_timeout_s=1, command_ttl_s=1)
    keystore = SoftwareKeyStore(master_key_file(tmp_path))
    ordered, manual = await meters_with_keys(database_url, keystore, 2)
    published = Published()
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        loop = CommandLoop(pool, keystore, published, Topics("t/"), LoopOptions(batch=1))
        async with pool.connection() as conn, conn.transaction():
            # A credit-control order (windowed) first, then a person's command.
            await order_command(
                conn, meter_id=ordered, action=CommandAction.DISCONNECT,
                origin="credit_control", requested_by="test", windowed=True,
            )  # fmt: skip
            await order_command(
                conn, meter_id=manual, action=CommandAction.DISCONNECT,
                origin="manual", requested_by="test",
            )  # fmt: skip
        for _ in range(3):
            await loop.tick()
        assert len(published.topics) == 2
        # Both meters drop off the network; both messages expire unanswered.
        await report_online(pool, [ordered, manual], False)
        await asyncio.sleep(1.5)
        for _ in range(3):
            await loop.tick()
        assert [s for _, s in await states(database_url)] == ["expired", "expired"]
        # The window closes (no execution day is near today), and both meters come back.
        today = datetime.now(UTC).weekday()
        await set_policy(database_url, window_days=[_DAYS[(today + 3) % 7]])
        await report_online(pool, [ordered, manual], True)
        for _ in range(3):
            await loop.tick()
        # The order waits for its window; the person's command goes out again meanwhile.
        assert await states(database_url) == [(ordered, "expired"), (manual, "sent")]
        assert (await messages(database_url, ordered), await messages(database_url, manual)) == (
            1,
            2,
        )
