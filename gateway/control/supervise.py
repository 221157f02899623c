"""Commands whose confirmation does not come: probe, retry, give up; wait for an offline meter
and re-issue an expired command once it is back and the order still stands.

What to do is decided by the pure :func:`gateway.control.lifecycle.on_timeout`; this module
applies it. A credit-control order is repeated only inside the execution window and while
execution is not halted, and is checked against the account's current facts before it is
re-issued (:func:`still_stands`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from gateway.control import orders
from gateway.control.commands import finish
from gateway.control.lifecycle import CommandState, TimeoutStep, on_timeout
from gateway.control.policy import Policy
from gateway.control.readback import ACTOR
from gateway.control.window import in_window, next_window_start
from protocols.commands import CommandAction

__all__ = ["Signer", "halted", "still_stands", "supervise"]

Conn = psycopg.AsyncConnection[Any]
Signer = Callable[[Conn, int, str, CommandAction, Policy], Awaitable[None]]
"""Signs and stores one message of a command: (conn, command id, meter id, action, policy)."""


async def halted(conn: Conn) -> bool:
    """Whether an operator has halted credit-control execution."""
    cur = await conn.execute("SELECT halted FROM control_halt")
    row = await cur.fetchone()
    return bool(row and row[0])


async def supervise(conn: Conn, policy: Policy, sign: Signer, *, batch: int) -> int:
    """Look after the sent commands whose confirmation time has passed, and the expired
    ones whose meter is back; returns how many were acted on."""
    handled = 0
    now = datetime.now(UTC)
    async with conn.transaction():
        is_halted = await halted(conn)
        cur = await conn.execute(
            "SELECT c.command_id, c.meter_id, c.action, c.state, c.attempts, c.probes,"
            " c.reissues, c.windowed, c.origin, coalesce(m.online, false), l.expires_at"
            " FROM meter_commands c JOIN meters m USING (meter_id)"
            " JOIN LATERAL (SELECT expires_at FROM command_messages"
            "   WHERE command_id = c.command_id ORDER BY created_at DESC LIMIT 1) l ON true"
            " WHERE ((c.state IN ('sent', 'acknowledged') AND c.due_at <= now())"
            "        OR (c.state = 'expired' AND m.online))"
            " AND NOT EXISTS (SELECT 1 FROM command_messages u"
            "   WHERE u.command_id = c.command_id AND u.published_at IS NULL)"
            " ORDER BY c.command_id LIMIT %s FOR UPDATE OF c SKIP LOCKED",
            (batch,),
        )
        for row in await cur.fetchall():
            handled += await _one(conn, row, policy, sign, now=now, halted=is_halted)
    return handled


async def _one(
    conn: Conn,
    row: tuple[Any, ...],
    policy: Policy,
    sign: Signer,
    *,
    now: datetime,
    halted: bool,
) -> int:
    command_id, meter_id, action, state, attempts, probes, reissues = row[:7]
    windowed, origin, online, expires_at = row[7:]
    timeout = timedelta(seconds=policy.confirm_timeout_s)
    if windowed and (halted or not in_window(now, policy)):
        # A credit-control order is repeated only when it could be sent afresh.
        opens = now + timeout if halted else next_window_start(now, policy)
        await conn.execute(
            "UPDATE meter_commands SET due_at = %s WHERE command_id = %s", (opens, command_id)
        )
        return 0
    if state == "expired":
        if reissues >= policy.command_retries:
            await finish(
                conn,
                command_id,
                CommandState.UNCONFIRMED,
                f"expired {reissues + 1} times before the meter took it",
                actor=ACTOR,
            )
            return 1
        if not await still_stands(conn, command_id, origin):
            return 1
        await sign(conn, command_id, meter_id, CommandAction(action), policy)
        await conn.execute(
            "UPDATE meter_commands SET reissues = reissues + 1, attempts = attempts + 1,"
            " probes = 0 WHERE command_id = %s",
            (command_id,),
        )
        return 1
    step = on_timeout(
        now=now,
        online=online,
        expires_at=expires_at,
        attempts=attempts - reissues,
        probes=probes,
        retries=policy.command_retries,
        confirm_timeout=timeout,
    )
    match step.step:
        case TimeoutStep.WAIT:
            await conn.execute(
                "UPDATE meter_commands SET due_at = %s WHERE command_id = %s",
                (step.due_at, command_id),
            )
            return 0
        case TimeoutStep.EXPIRE:
            await conn.execute(
                "UPDATE meter_commands SET state = 'expired', due_at = NULL WHERE command_id = %s",
                (command_id,),
            )
        case TimeoutStep.PROBE:
            await sign(conn, command_id, meter_id, CommandAction.READ_STATE, policy)
            await conn.execute(
                "UPDATE meter_commands SET probes = probes + 1 WHERE command_id = %s",
                (command_id,),
            )
        case TimeoutStep.RETRY:
            await sign(conn, command_id, meter_id, CommandAction(action), policy)
            await conn.execute(
                "UPDATE meter_commands SET attempts = attempts + 1, probes = 0"
                " WHERE command_id = %s",
                (command_id,),
            )
        case TimeoutStep.GIVE_UP:
            await finish(
                conn,
                command_id,
                CommandState.UNCONFIRMED,
                f"no matching state from the meter after {attempts} attempts",
                actor=ACTOR,
            )
    return 1


async def still_stands(conn: Conn, command_id: int, origin: str) -> bool:
    """Whether a credit-control order still holds on today's facts; if not it is
    cancelled here. A person's command stands until another supersedes it."""
    if origin != "credit_control":
        return True
    lapsed = await orders.order_lapsed(conn, command_id)
    if lapsed is None:
        return True
    await finish(conn, command_id, CommandState.CANCELLED, lapsed, actor=ACTOR)
    return False
