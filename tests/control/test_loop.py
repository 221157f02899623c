"""The command loop against the real database, with a publisher that only records: a meter
without a command key, a payment racing a disconnect that is already signed, a retry of an
order that no longer stands, and the halt holding back what is already signed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.control.commands import order_command
from gateway.control.dispatch import CommandLoop
from gateway.control.execution import set_halt
from gateway.control.facts import load_accounts
from gateway.control.orders import order_step, release
from gateway.control.policy import policy_from_json
from gateway.control.rules import Step
from gateway.keystore import SoftwareKeyStore
from protocols.commands import CommandAction
from protocols.topics import Topics
from tests.control.rig import OPEN_WINDOW, master_key_file, set_policy

Conn = psycopg.AsyncConnection[Any]


class Recorder:
    """Publishes nothing: remembers what it was given, or refuses while ``failing``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.failing = False

    async def __call__(self, topic: str, payload: bytes) -> None:
        if self.failing:
            raise ConnectionError("broker unreachable")
        self.sent.append((topic, payload))


@pytest.fixture
async def pool(database_url: str) -> Any:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, open=False)
    await pool.open()
    yield pool
    await pool.close()


async def _setup(conn: Conn, keystore: SoftwareKeyStore, meters: dict[str, bool]) -> None:
    """Postpaid electricity meters of accounts in arrears (notices served); True: keyed."""
    for meter_id, keyed in meters.items():
        account = f"ACC-{meter_id}"
        await conn.execute(
            "INSERT INTO accounts (account_id, arrears, arrears_since)"
            " VALUES (%s, 2000, '2026-06-01')",
            (account,),
        )
        await conn.execute(
            "INSERT INTO meters (meter_id, utility, payment, verified)"
            " VALUES (%s, 'electricity', 'postpaid', true)",
            (meter_id,),
        )
        await conn.execute(
            "INSERT INTO meter_vending (meter_id, account_id) VALUES (%s, %s)", (meter_id, account)
        )
        await conn.execute(
            "INSERT INTO control_accounts (account_id, notice_served_on, final_notice_served_on)"
            " VALUES (%s, '2026-09-01', '2026-10-01')",
            (account,),
        )
        if keyed:
            await keystore.ensure_command_key(conn, meter_id)


async def _state(conn: Conn, command_id: int) -> tuple[str, str]:
    cur = await conn.execute(
        "SELECT state, outcome FROM meter_commands WHERE command_id = %s", (command_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


async def _order(conn: Conn, meter_id: str) -> int:
    """A credit-control disconnect, as an approved run orders it."""
    policy = policy_from_json(OPEN_WINDOW)
    [account] = await load_accounts(conn, [f"ACC-{meter_id}"])
    await order_step(
        conn,
        step=Step.DISCONNECT,
        account=account,
        meter=account.meters[0],
        policy=policy,
        actor="op",
        run=None,
        reason="arrears",
    )
    cur = await conn.execute(
        "SELECT max(command_id) FROM meter_commands WHERE meter_id = %s", (meter_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_meter_without_a_command_key_does_not_hold_up_the_others(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    await set_policy(database_url)
    keystore = SoftwareKeyStore(master_key_file(tmp_path))
    recorder = Recorder()
    loop = CommandLoop(pool, keystore, recorder, Topics(""))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await _setup(conn, keystore, {"NOKEY": False, "KEYED": True})
        async with conn.transaction():
            lost = await order_command(
                conn, meter_id="NOKEY", action=CommandAction.READ_STATE, origin="manual",
                requested_by="tech",
            )  # fmt: skip
            sent = await order_command(
                conn, meter_id="KEYED", action=CommandAction.READ_STATE, origin="manual",
                requested_by="tech",
            )  # fmt: skip
        await loop.tick()
        state, outcome = await _state(conn, lost)
        assert state == "rejected" and "cannot sign" in outcome
        assert (await _state(conn, sent))[0] == "sent"
        assert [topic for topic, _ in recorder.sent] == ["meters/KEYED/commands"]
        cur = await conn.execute("SELECT meter_id, kind FROM alert_data")
        assert await cur.fetchall() == [("NOKEY", "command_rejected")]


async def test_a_payment_after_the_disconnect_was_signed_reconnects_instead_of_cancelling(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    await set_policy(database_url, reconnection_fee="150.00")
    keystore = SoftwareKeyStore(master_key_file(tmp_path))
    recorder = Recorder()
    recorder.failing = True  # signed and committed, but the broker has not taken it (yet)
    loop = CommandLoop(pool, keystore, recorder, Topics(""))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await _setup(conn, keystore, {"E1": True})
        async with conn.transaction():
            disconnect = await _order(conn, "E1")
        await loop.tick()
        cur = await conn.execute("SELECT count(*) FROM command_messages")
        assert await cur.fetchone() == (1,)
        # The payment: the disconnect may already be on its way, so it is not "never sent".
        [account] = await load_accounts(conn, ["ACC-E1"])
        async with conn.transaction():
            outcome = await release(
                conn, account_id="ACC-E1", meter=account.meters[0],
                policy=policy_from_json(OPEN_WINDOW | {"reconnection_fee": "150.00"}),
                actor="billing", run=None, cause="paid",
            )  # fmt: skip
        assert outcome[0] == "ordered" and "(reconnect)" in outcome[1]
        state, why = await _state(conn, disconnect)
        assert state == "cancelled" and "superseded" in why
        # No fee: the disconnect was never seen to take effect.
        cur = await conn.execute("SELECT count(*) FROM account_charges")
        assert await cur.fetchone() == (0,)
        recorder.failing = False
        await loop.tick()
        actions = [payload for _, payload in recorder.sent]
        assert len(actions) == 1 and b'"reconnect"' in actions[0]  # the disconnect is not sent


async def test_a_retry_is_not_sent_for_an_order_that_no_longer_stands(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    await set_policy(database_url, confirm_timeout_s=1)
    keystore = SoftwareKeyStore(master_key_file(tmp_path))
    recorder = Recorder()
    loop = CommandLoop(pool, keystore, recorder, Topics(""))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await _setup(conn, keystore, {"E2": True})
        await conn.execute("UPDATE meters SET online = true WHERE meter_id = 'E2'")
        async with conn.transaction():
            command_id = await _order(conn, "E2")
        await loop.tick()  # sent
        await asyncio.sleep(1.1)
        await loop.tick()  # no state: read_state
        assert [b'"disconnect"' in p for _, p in recorder.sent] == [True, False]
        # Meanwhile the customer disputes the whole amount.
        await conn.execute(
            "UPDATE accounts SET dispute_amount = 2000, dispute_state = 'open'"
            " WHERE account_id = 'ACC-E2'"
        )
        await asyncio.sleep(1.1)
        await loop.tick()  # the retry is due, but the order no longer stands
        state, why = await _state(conn, command_id)
        assert state == "cancelled" and "no longer stands" in why
        assert len(recorder.sent) == 2
        cur = await conn.execute("SELECT state FROM control_meters WHERE meter_id = 'E2'")
        assert await cur.fetchone() == ("normal",)


async def test_the_halt_holds_back_orders_already_signed(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    await set_policy(database_url)
    keystore = SoftwareKeyStore(master_key_file(tmp_path))
    recorder = Recorder()
    recorder.failing = True
    loop = CommandLoop(pool, keystore, recorder, Topics(""))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await _setup(conn, keystore, {"E3": True, "E4": True})
        async with conn.transaction():
            await _order(conn, "E3")
            manual = await order_command(
                conn, meter_id="E4", action=CommandAction.READ_STATE, origin="manual",
                requested_by="tech",
            )  # fmt: skip
        await loop.tick()  # both signed; the broker refuses
        await set_halt(conn, halted=True, actor="op", reason="storm")
        recorder.failing = False
        await loop.tick()
        # The credit-control order waits; a person's read_state is not held back.
        assert [t for t, _ in recorder.sent] == ["meters/E4/commands"]
        assert (await _state(conn, manual))[0] == "sent"
        await set_halt(conn, halted=False, actor="op", reason="")
        await loop.tick()
        assert sorted(t for t, _ in recorder.sent) == ["meters/E3/commands", "meters/E4/commands"]
