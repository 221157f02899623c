"""Confirmation by read-back against the real database: only state reported after a command
was issued counts, the channels count as well as the status, and commands still waiting never
hide later ones from the pass."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gateway.control.commands import order_command
from gateway.control.readback import apply_replies, confirm
from protocols.commands import CommandAction


async def _meter(conn: psycopg.AsyncConnection[Any], meter_id: str, utility: str) -> None:
    await conn.execute(
        "INSERT INTO meters (meter_id, utility, verified) VALUES (%s, %s, true)",
        (meter_id, utility),
    )


async def _sent(conn: psycopg.AsyncConnection[Any], meter_id: str, action: CommandAction) -> int:
    """A command as the loop leaves it once published."""
    command_id = await order_command(
        conn, meter_id=meter_id, action=action, origin="manual", requested_by="test"
    )
    await conn.execute(
        "INSERT INTO command_messages (message_id, command_id, meter_id, action, payload,"
        " issued_at, expires_at, published_at, publishes)"
        " VALUES (%s, %s, %s, %s, '\\x7b7d', now(), now() + interval '10 minutes', now(), 1)",
        (f"m{command_id}", command_id, meter_id, action.value),
    )
    await conn.execute(
        "UPDATE meter_commands SET state = 'sent', sent_at = now(), attempts = 1"
        " WHERE command_id = %s",
        (command_id,),
    )
    return command_id


async def _report(
    conn: psycopg.AsyncConnection[Any], meter_id: str, relay: str | None, valve: str | None
) -> None:
    await conn.execute(
        "UPDATE meters SET online = true, status = %s, status_received_at = clock_timestamp()"
        " WHERE meter_id = %s",
        (Jsonb({"state": "online", "relay": relay, "valve": valve}), meter_id),
    )


async def _states(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    cur = await conn.execute("SELECT meter_id, state FROM meter_commands ORDER BY command_id")
    return {str(m): str(s) for m, s in await cur.fetchall()}


async def test_only_state_reported_after_the_command_confirms_it(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await _meter(conn, "E1", "electricity")
        await _report(conn, "E1", "disconnected", None)  # before the command: stale
        await _sent(conn, "E1", CommandAction.DISCONNECT)
        assert await confirm(conn, batch=10) == (0, 0)
        await _report(conn, "E1", "disconnected", None)
        assert await confirm(conn, batch=10) == (1, 0)
        assert await _states(conn) == {"E1": "confirmed"}


async def test_a_reply_applied_after_the_confirmation_still_records_the_acknowledgement(
    database_url: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await _meter(conn, "E2", "electricity")
        command_id = await _sent(conn, "E2", CommandAction.DISCONNECT)
        # the meter's status report overtakes its reply to the command
        await _report(conn, "E2", "disconnected", None)
        assert await confirm(conn, batch=10) == (1, 0)
        await conn.execute(
            "INSERT INTO command_replies (meter_id, message_id, result, ts, received_at)"
            " VALUES ('E2', %s, 'ok', now(), clock_timestamp())",
            (f"m{command_id}",),
        )
        assert await apply_replies(conn, batch=10, confirm_timeout=timedelta(minutes=5)) == 1
        cur = await conn.execute(
            "SELECT c.state, c.acknowledged_at IS NOT NULL, m.reply_result"
            " FROM meter_commands c JOIN command_messages m USING (command_id)"
            " JOIN command_replies r ON r.message_id = m.message_id"
        )
        assert await cur.fetchone() == ("confirmed", True, "ok")


async def test_the_valve_channel_confirms_a_restriction(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await _meter(conn, "W1", "water")
        await _sent(conn, "W1", CommandAction.RESTRICT)
        # 24.4.0 = 1 (open) first: not what was ordered; then 2 (restricted).
        await conn.execute(
            "INSERT INTO reading_data (meter_id, channel, ts, value, received_at)"
            " VALUES ('W1', '24.4.0', now(), 1, clock_timestamp())"
        )
        assert await confirm(conn, batch=10) == (0, 0)
        await conn.execute(
            "INSERT INTO reading_data (meter_id, channel, ts, value, received_at)"
            " VALUES ('W1', '24.4.0', now() + interval '1 minute', 2, clock_timestamp())"
        )
        assert await confirm(conn, batch=10) == (1, 0)
        cur = await conn.execute("SELECT confirmed_state FROM meter_commands")
        assert await cur.fetchone() == ({"relay": None, "valve": "restricted"},)


async def test_waiting_commands_do_not_hide_later_ones(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for n in range(5):
            await _meter(conn, f"E{n}", "electricity")
            await _sent(conn, f"E{n}", CommandAction.DISCONNECT)
        # The first three report a state that is not the order; the last two the order.
        for n in range(5):
            await _report(conn, f"E{n}", "connected" if n < 3 else "disconnected", None)
        done, after = await confirm(conn, batch=2)
        assert done == 0 and after > 0
        total = 0
        for _ in range(3):
            done, after = await confirm(conn, batch=2, after=after)
            total += done
        assert total == 2
        assert list((await _states(conn)).values()) == ["sent"] * 3 + ["confirmed"] * 2
