"""Commands whose confirmation does not come: probe, retry, give up; wait for an offline meter
and re-issue an expired command once it is back and the order still stands.

What to do is decided by the pure :func:`gateway.control.lifecycle.on_timeout`; this module
applies it. A credit-control order is repeated only inside the execution window and while
execution is not halted, and is checked against the account's current facts before it is
re-issued (:func:`still_stands`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from gateway import audit
from gateway.control import orders
from gateway.control.commands import finish
from gateway.control.execution import halted
from gateway.control.lifecycle import CommandState, TimeoutStep, on_timeout
from gateway.control.policy import Policy
from gateway.control.readback import ACTOR
from gateway.control.window import in_window, next_window_start
from protocols.commands import CommandAction

__all__ = [
    "OFFLINE_GIVE_UP",
    "Signer",
    "still_stands",
    "supervise",
    "windowed_budget",
]

Conn = psycopg.AsyncConnection[Any]
Signer = Callable[[Conn, int, str, CommandAction, Policy], Awaitable[bool]]
"""Signs and stores one message of a command: (conn, command id, meter id, action, policy);
False if it could not (the command has then ended ``rejected``)."""

OFFLINE_GIVE_UP: Final = timedelta(days=7)
"""An expired command whose meter has not come back for this long ends ``unconfirmed``."""
_RATE_WAIT: Final = timedelta(seconds=10)


async def windowed_budget(conn: Conn, policy: Policy, now: datetime) -> int:
    """How many more credit-control order messages (first sends, probes, retries, re-issues)
    may be signed now: none outside the window or while halted, else what is left of the
    policy's rate for the last minute."""
    if not in_window(now, policy) or await halted(conn):
        return 0
    cur = await conn.execute(
        "SELECT count(*) FROM command_messages cm JOIN meter_commands c USING (command_id)"
        " WHERE cm.created_at > now() - interval '1 minute' AND c.windowed"
    )
    got = await cur.fetchone()
    return max(0, policy.commands_per_minute - int(got[0] if got else 0))


@dataclass(slots=True)
class _Pass:
    policy: Policy
    sign: Signer
    now: datetime
    budget: int
    """What is left of the windowed budget in this pass."""

    def take_budget(self) -> bool:
        """Use one message of the windowed budget; False when none is left."""
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True

    def resume_at(self) -> datetime:
        """When to look again at a credit-control order that may not be repeated now (outside
        the window, halted, or over the rate)."""
        later = (
            self.now
            if in_window(self.now, self.policy)
            else next_window_start(self.now, self.policy)
        )
        return max(later, self.now + _RATE_WAIT)


async def supervise(conn: Conn, policy: Policy, sign: Signer, *, batch: int) -> int:
    """Look after the sent commands whose confirmation time has passed, and the expired
    ones whose meter is back (or gone for good); returns how many were acted on."""
    handled = 0
    now = datetime.now(UTC)
    async with conn.transaction(), conn.pipeline():
        state = _Pass(policy, sign, now, await windowed_budget(conn, policy, now))
        cur = await conn.execute(
            "SELECT c.command_id, c.meter_id, c.action, c.state, c.attempts, c.probes,"
            " c.reissues, c.windowed, c.origin, coalesce(m.online, false), l.expires_at"
            " FROM meter_commands c JOIN meters m USING (meter_id)"
            " JOIN LATERAL (SELECT expires_at FROM command_messages"
            "   WHERE command_id = c.command_id ORDER BY created_at DESC LIMIT 1) l ON true"
            " WHERE coalesce(c.due_at, '-infinity') <= now()"
            " AND (c.state IN ('sent', 'acknowledged')"
            "      OR (c.state = 'expired' AND (m.online OR l.expires_at < now() - %s)))"
            " AND NOT EXISTS (SELECT 1 FROM command_messages u"
            "   WHERE u.command_id = c.command_id AND u.published_at IS NULL)"
            " ORDER BY c.command_id LIMIT %s FOR UPDATE OF c SKIP LOCKED",
            (OFFLINE_GIVE_UP, batch),
        )
        for row in await cur.fetchall():
            handled += await _one(conn, row, state)
    return handled


async def _postpone(conn: Conn, command_id: int, until: datetime) -> int:
    await conn.execute(
        "UPDATE meter_commands SET due_at = %s WHERE command_id = %s", (until, command_id)
    )
    return 0


async def _step(conn: Conn, command_id: int, meter_id: str, what: str, detail: str) -> None:
    await audit.record(
        conn,
        actor=ACTOR,
        action=f"command.{what}",
        object=f"meter:{meter_id}",
        outcome=what,
        detail={"command_id": command_id, "reason": detail},
    )


async def _one(conn: Conn, row: tuple[Any, ...], run: _Pass) -> int:
    command_id, meter_id, action, state, attempts, probes, reissues = row[:7]
    windowed, origin, online, expires_at = row[7:]
    policy, now = run.policy, run.now
    timeout = timedelta(seconds=policy.confirm_timeout_s)
    if state == "expired" and not online:
        await finish(
            conn,
            command_id,
            CommandState.UNCONFIRMED,
            f"the meter has been offline since its command expired at {expires_at.isoformat()}",
            actor=ACTOR,
        )
        return 1
    if state == "expired":
        if windowed and not run.take_budget():
            return await _postpone(conn, command_id, run.resume_at())
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
        if not await run.sign(conn, command_id, meter_id, CommandAction(action), policy):
            return 1
        await conn.execute(
            "UPDATE meter_commands SET reissues = reissues + 1, attempts = attempts + 1,"
            " probes = 0 WHERE command_id = %s",
            (command_id,),
        )
        await _step(conn, command_id, meter_id, "reissue", "the meter is back online")
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
            assert step.due_at is not None
            return await _postpone(conn, command_id, step.due_at)
        case TimeoutStep.EXPIRE:
            await conn.execute(
                "UPDATE meter_commands SET state = 'expired', due_at = NULL WHERE command_id = %s",
                (command_id,),
            )
            await _step(conn, command_id, meter_id, "expire", "expired while the meter was away")
        case TimeoutStep.PROBE | TimeoutStep.RETRY if windowed and not run.take_budget():
            return await _postpone(conn, command_id, run.resume_at())
        case TimeoutStep.PROBE:
            if not await run.sign(conn, command_id, meter_id, CommandAction.READ_STATE, policy):
                return 1
            await conn.execute(
                "UPDATE meter_commands SET probes = probes + 1 WHERE command_id = %s",
                (command_id,),
            )
            await _step(conn, command_id, meter_id, "probe", "no matching state: read_state")
        case TimeoutStep.RETRY:
            if not await still_stands(conn, command_id, origin):
                return 1
            if not await run.sign(conn, command_id, meter_id, CommandAction(action), policy):
                return 1
            await conn.execute(
                "UPDATE meter_commands SET attempts = attempts + 1, probes = 0"
                " WHERE command_id = %s",
                (command_id,),
            )
            await _step(conn, command_id, meter_id, "retry", f"attempt {attempts + 1}")
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
