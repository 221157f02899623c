"""The command loop: signs, publishes and follows commands to meters until each is confirmed
from the meter's own state, or ends with a reason.

One pass (:meth:`CommandLoop.tick`), each step its own transaction with its statements in
pipeline mode (only a fetch waits for the server: read results by fetching, never ``rowcount``):

1. apply the meters' replies (``ok`` acknowledges; a refusal is recorded and escalated);
2. confirm commands whose meter has since reported the ordered state;
3. look after commands whose confirmation time passed (probe, retry, give up; wait for an
   offline meter, re-issue an expired command when it is back and the order still stands);
4. sign the planned commands that may go now: credit-control orders only inside the execution
   window, below the rate limit and while execution is not halted, each re-checked against the
   account's current facts right before signing;
5. publish every signed message not yet published.

A message is committed (signed, with a fresh id and nonce) before it is published, and marked
published after the broker's PUBACK. A crash in between publishes the same bytes again on the
next pass: the meter refuses a repeat as ``replayed``, which for a message published more than
once counts as its acknowledgement. Nothing is lost, and no command is carried out twice.

Several gateways may run the loop: a PostgreSQL advisory lock lets one of them work at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway import audit
from gateway.control import orders
from gateway.control.commands import finish
from gateway.control.lifecycle import (
    CommandState,
    MeterReport,
    TimeoutStep,
    on_timeout,
    report_from_channels,
    satisfies,
)
from gateway.control.policy import Policy
from gateway.control.store import current_policy
from gateway.control.window import in_window, next_window_start
from gateway.keystore.base import KeyStore
from protocols.commands import CLOCK_SKEW, CommandAction
from protocols.topics import Topics

__all__ = ["CommandLoop", "LoopOptions", "Publisher"]

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]
Publisher = Callable[[str, bytes], Awaitable[None]]
"""Publishes with QoS 1 and returns once the broker acknowledged it."""

_LOCK_KEY: Final = 0x6D676377  # one command loop at a time across gateways
_ACTOR: Final = "command-loop"


@dataclass(frozen=True, slots=True)
class LoopOptions:
    interval_s: float = 0.5
    batch: int = 1000
    publish_timeout_s: float = 10.0
    publish_concurrency: int = 64


class CommandLoop:
    """The command outbox's drain and supervisor (see the module docstring)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        keystore: KeyStore,
        publish: Publisher,
        topics: Topics,
        options: LoopOptions | None = None,
    ) -> None:
        self._pool = pool
        self._keystore = keystore
        self._publish = publish
        self._topics = topics
        self._options = options or LoopOptions()
        self._confirm_after = 0
        """The last command of the batch of live commands looked at after the oldest ones."""

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop``; a failing pass is logged once and retried."""
        failing = False
        while not stop.is_set():
            done = 0
            try:
                done = await self.tick()
                if failing:
                    log.info("command loop recovered")
                failing = False
            except Exception as exc:  # the loop outlives a broker or database outage
                if not failing:
                    log.error("command loop failing: %s", exc, exc_info=exc)
                failing = True
            if done == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._options.interval_s)

    async def tick(self) -> int:
        """One pass; returns how much it did (0: nothing to do, or another gateway's turn)."""
        async with self._pool.connection() as conn:
            # A session lock: it outlives the transactions below, and a gateway that dies
            # (its connection gone) releases it.
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,))
            got = await cur.fetchone()
            await conn.commit()
            if not got or not got[0]:
                return 0
            try:
                _, policy = await current_policy(conn)
                await conn.commit()
                done = await self._apply_replies(conn)
                done += await self._confirm(conn)
                done += await self._supervise(conn, policy)
                done += await self._dispatch(conn, policy)
                done += await self._publish_pending(conn, policy)
                return done
            finally:
                await conn.rollback()
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
                await conn.commit()

    # -------------------------------------------------------------- 1. replies

    async def _apply_replies(self, conn: Conn) -> int:
        async with conn.transaction(), conn.pipeline():
            cur = await conn.execute(
                "SELECT r.reply_id, r.meter_id, r.message_id, r.result, r.reason, r.received_at,"
                " m.command_id, m.action, m.publishes, m.expires_at, c.state, c.action"
                " FROM command_replies r"
                " LEFT JOIN command_messages m"
                "   ON m.message_id = r.message_id AND m.meter_id = r.meter_id"
                " LEFT JOIN meter_commands c ON c.command_id = m.command_id"
                " WHERE r.applied_at IS NULL ORDER BY r.reply_id LIMIT %s"
                " FOR UPDATE OF r SKIP LOCKED",
                (self._options.batch,),
            )
            rows = await cur.fetchall()
            for row in rows:
                outcome = await self._apply_reply(conn, row)
                await conn.execute(
                    "UPDATE command_replies SET applied_at = now(), outcome = %s"
                    " WHERE reply_id = %s",
                    (outcome, row[0]),
                )
        return len(rows)

    async def _apply_reply(self, conn: Conn, row: tuple[Any, ...]) -> str:
        (_, meter_id, message_id, result, reason, received_at) = row[:6]
        command_id, message_action, publishes, expires_at, state, action = row[6:]
        if command_id is None:
            # The meter answered a command this gateway never sent: forged, or another sender.
            log.warning(
                "reply to a command this gateway never sent",
                extra={"meter_id": meter_id, "result": result, "reason": reason},
            )
            await audit.record(
                conn,
                actor=f"meter:{meter_id}",
                action="command.reply.unsolicited",
                object=f"meter:{meter_id}",
                outcome=str(result),
                detail={"message_id": message_id, "reason": reason},
            )
            return "unsolicited"
        await conn.execute(
            "UPDATE command_messages SET reply_result = coalesce(reply_result, %s),"
            " reply_reason = CASE WHEN reply_result IS NULL THEN %s ELSE reply_reason END,"
            " replied_at = coalesce(replied_at, now()) WHERE message_id = %s",
            (result, reason, message_id),
        )
        await audit.record(
            conn,
            actor=f"meter:{meter_id}",
            action="command.reply",
            object=f"meter:{meter_id}",
            outcome=str(result),
            detail={"command_id": command_id, "message_id": message_id, "reason": reason},
        )
        if state not in ("sent", "acknowledged", "expired"):
            return f"command already {state}"
        is_attempt = message_action == action
        repeat_of_ours = result == "rejected" and reason == "replayed" and publishes > 1
        if result == "ok" or repeat_of_ours:
            if is_attempt and state == "sent":
                await conn.execute(
                    "UPDATE meter_commands SET state = 'acknowledged',"
                    " acknowledged_at = coalesce(acknowledged_at, now())"
                    " WHERE command_id = %s AND state = 'sent'",
                    (command_id,),
                )
                return "acknowledged"
            return "noted"
        if reason == "expired" and received_at >= expires_at:
            # Delivered after its expiry (the meter was away): re-issued once it is back.
            await conn.execute(
                "UPDATE meter_commands SET state = 'expired', due_at = NULL"
                " WHERE command_id = %s AND state IN ('sent', 'acknowledged')",
                (command_id,),
            )
            return "expired"
        await finish(
            conn,
            command_id,
            CommandState.REJECTED,
            f"the meter refused {message_action}: {reason}",
            actor=_ACTOR,
        )
        return "rejected"

    # -------------------------------------------------------------- 2. confirmation

    async def _confirm(self, conn: Conn) -> int:
        confirmed = 0
        async with conn.transaction(), conn.pipeline():
            rows = await self._confirmable(conn, 0)
            if len(rows) == self._options.batch:
                # A full batch of the oldest: also the batch after the one looked at last (from
                # the top again once through), so that commands waiting on silent meters
                # cannot keep the others from ever being looked at.
                more = await self._confirmable(conn, max(self._confirm_after, rows[-1][0]))
                self._confirm_after = more[-1][0] if len(more) == self._options.batch else 0
                rows += more
            for (
                command_id,
                action,
                relay,
                valve,
                fresh,
                relay_code,
                valve_code,
            ) in rows:
                reports = [report_from_channels(relay_code, valve_code)]
                if fresh:
                    reports.insert(0, MeterReport(relay, valve))
                wanted = CommandAction(action)
                match = next((r for r in reports if satisfies(wanted, r)), None)
                if match is None:
                    continue
                state = {"relay": match.relay, "valve": match.valve}
                if await finish(
                    conn,
                    command_id,
                    CommandState.CONFIRMED,
                    f"the meter reports relay={match.relay} valve={match.valve}",
                    actor=_ACTOR,
                    confirmed_state=state,
                ):
                    confirmed += 1
        return confirmed

    async def _confirmable(self, conn: Conn, after: int) -> list[tuple[Any, ...]]:
        """A batch of live commands after ``after`` (by id), each with what its meter reported."""
        cur = await conn.execute(
            "SELECT c.command_id, c.action, m.status->>'relay', m.status->>'valve',"
            " m.status_received_at >= f.created_at,"
            " (SELECT r.value FROM reading_data r WHERE r.meter_id = c.meter_id"
            "   AND r.channel = '96.3.10' AND r.ts >= f.issued_at - %s"
            "   AND r.received_at >= f.created_at ORDER BY r.ts DESC LIMIT 1),"
            " (SELECT r.value FROM reading_data r WHERE r.meter_id = c.meter_id"
            "   AND r.channel = '24.4.0' AND r.ts >= f.issued_at - %s"
            "   AND r.received_at >= f.created_at ORDER BY r.ts DESC LIMIT 1)"
            " FROM meter_commands c JOIN meters m USING (meter_id)"
            " JOIN LATERAL (SELECT min(created_at) AS created_at, min(issued_at) AS issued_at"
            "   FROM command_messages WHERE command_id = c.command_id) f ON true"
            " WHERE c.state IN ('sent', 'acknowledged', 'expired')"
            " AND f.created_at IS NOT NULL AND c.command_id > %s"
            " ORDER BY c.command_id LIMIT %s FOR UPDATE OF c SKIP LOCKED",
            (CLOCK_SKEW, CLOCK_SKEW, after, self._options.batch),
        )
        return await cur.fetchall()

    # -------------------------------------------------------------- 3. supervision

    async def _supervise(self, conn: Conn, policy: Policy) -> int:
        handled = 0
        now = datetime.now(UTC)
        async with conn.transaction(), conn.pipeline():
            halted = await _halted(conn)
            cur = await conn.execute(
                "SELECT c.command_id, c.meter_id, c.action, c.state, c.attempts, c.probes,"
                " c.reissues, c.windowed, c.origin, coalesce(m.online, false), l.expires_at"
                " FROM meter_commands c JOIN meters m USING (meter_id)"
                " JOIN LATERAL (SELECT expires_at FROM command_messages"
                "   WHERE command_id = c.command_id ORDER BY created_at DESC LIMIT 1) l ON true"
                " WHERE ((c.state IN ('sent', 'acknowledged') AND c.due_at <= now())"
                # An expired command whose meter is back, unless told to wait (an order for
                # its window): otherwise a batch of those would be taken again on every pass.
                "        OR (c.state = 'expired' AND m.online"
                "            AND (c.due_at IS NULL OR c.due_at <= now())))"
                " AND NOT EXISTS (SELECT 1 FROM command_messages u"
                "   WHERE u.command_id = c.command_id AND u.published_at IS NULL)"
                " ORDER BY c.command_id LIMIT %s FOR UPDATE OF c SKIP LOCKED",
                (self._options.batch,),
            )
            for row in await cur.fetchall():
                handled += await self._supervise_one(conn, row, policy, now, halted=halted)
        return handled

    async def _supervise_one(
        self, conn: Conn, row: tuple[Any, ...], policy: Policy, now: datetime, *, halted: bool
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
                    actor=_ACTOR,
                )
                return 1
            if not await self._still_stands(conn, command_id, origin):
                return 1
            await self._sign(conn, command_id, meter_id, CommandAction(action), policy)
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
                    "UPDATE meter_commands SET state = 'expired', due_at = NULL"
                    " WHERE command_id = %s",
                    (command_id,),
                )
            case TimeoutStep.PROBE:
                await self._sign(conn, command_id, meter_id, CommandAction.READ_STATE, policy)
                await conn.execute(
                    "UPDATE meter_commands SET probes = probes + 1 WHERE command_id = %s",
                    (command_id,),
                )
            case TimeoutStep.RETRY:
                await self._sign(conn, command_id, meter_id, CommandAction(action), policy)
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
                    actor=_ACTOR,
                )
        return 1

    async def _still_stands(self, conn: Conn, command_id: int, origin: str) -> bool:
        """Whether a credit-control order still holds on today's facts; if not it is
        cancelled here. A person's command stands until another supersedes it."""
        if origin != "credit_control":
            return True
        lapsed = await orders.order_lapsed(conn, command_id)
        if lapsed is None:
            return True
        await finish(conn, command_id, CommandState.CANCELLED, lapsed, actor=_ACTOR)
        return False

    # -------------------------------------------------------------- 4. dispatch

    async def _dispatch(self, conn: Conn, policy: Policy) -> int:
        now = datetime.now(UTC)
        async with conn.transaction(), conn.pipeline():
            budget = self._options.batch
            windowed_budget = 0
            if in_window(now, policy) and not await _halted(conn):
                cur = await conn.execute(
                    "SELECT count(*) FROM command_messages cm JOIN meter_commands c"
                    " USING (command_id) WHERE c.windowed"
                    " AND cm.created_at > now() - interval '1 minute'"
                )
                got = await cur.fetchone()
                windowed_budget = max(0, policy.commands_per_minute - int(got[0] if got else 0))
            cur = await conn.execute(
                "SELECT command_id, meter_id, action, windowed, origin FROM meter_commands"
                " WHERE state = 'planned'"
                # The window, not the instant computed when it was ordered, decides for a
                # credit-control order: a changed policy applies to orders already waiting.
                " AND (CASE WHEN windowed THEN %s > 0 ELSE not_before <= now() END)"
                " ORDER BY windowed, command_id LIMIT %s FOR UPDATE SKIP LOCKED",
                (windowed_budget, budget),
            )
            signed = 0
            for command_id, meter_id, action, windowed, origin in await cur.fetchall():
                if windowed:
                    if windowed_budget <= 0:
                        continue
                    windowed_budget -= 1
                if not await self._still_stands(conn, command_id, origin):
                    continue
                await self._sign(conn, command_id, meter_id, CommandAction(action), policy)
                await conn.execute(
                    "UPDATE meter_commands SET attempts = attempts + 1 WHERE command_id = %s",
                    (command_id,),
                )
                signed += 1
        return signed

    async def _sign(
        self, conn: Conn, command_id: int, meter_id: str, action: CommandAction, policy: Policy
    ) -> None:
        """Sign a message for the command with a fresh id and nonce, and store it unpublished."""
        issued = datetime.now(UTC).replace(microsecond=0)
        command = await self._keystore.sign_command(
            conn,
            meter_id=meter_id,
            command_id=uuid.uuid4().hex,
            action=action,
            issued_at=issued,
            ttl=timedelta(seconds=policy.command_ttl_s),
            nonce=secrets.token_hex(16),
        )
        await conn.execute(
            "INSERT INTO command_messages (message_id, command_id, meter_id, action, payload,"
            " issued_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                command.id,
                command_id,
                meter_id,
                action.value,
                command.to_json(),
                datetime.fromisoformat(command.issued_at),
                datetime.fromisoformat(command.expires_at),
            ),
        )

    # -------------------------------------------------------------- 5. publishing

    async def _publish_pending(self, conn: Conn, policy: Policy) -> int:
        cur = await conn.execute(
            "SELECT m.message_id, m.meter_id, m.payload FROM command_messages m"
            " JOIN meter_commands c USING (command_id)"
            " WHERE m.published_at IS NULL AND c.state IN ('planned', 'sent', 'acknowledged',"
            " 'expired') ORDER BY m.created_at, m.message_id LIMIT %s",
            (self._options.batch,),
        )
        rows = await cur.fetchall()
        await conn.commit()
        if not rows:
            return 0
        gate = asyncio.Semaphore(self._options.publish_concurrency)

        async def one(meter_id: str, payload: bytes) -> bool:
            async with gate:
                try:
                    async with asyncio.timeout(self._options.publish_timeout_s):
                        await self._publish(self._topics.commands(meter_id), payload)
                except Exception as exc:
                    log.warning(
                        "publishing a command failed: %s", exc, extra={"meter_id": meter_id}
                    )
                    return False
                return True

        results = await asyncio.gather(*(one(r[1], bytes(r[2])) for r in rows))
        published = [r[0] for r, ok in zip(rows, results, strict=True) if ok]
        if published:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE command_messages SET published_at = coalesce(published_at, now()),"
                    " publishes = publishes + 1 WHERE message_id = ANY(%s)",
                    (published,),
                )
                # An attempt (re)starts the command's confirmation time; a probe only delays it.
                await conn.execute(
                    "UPDATE meter_commands c SET"
                    " state = CASE WHEN m.action = c.action THEN 'sent' ELSE c.state END,"
                    " sent_at = coalesce(c.sent_at, now()), due_at = now() + %s"
                    " FROM command_messages m WHERE m.message_id = ANY(%s)"
                    " AND m.command_id = c.command_id"
                    " AND c.state IN ('planned', 'sent', 'acknowledged', 'expired')",
                    (timedelta(seconds=policy.confirm_timeout_s), published),
                )
        return len(published)


async def _halted(conn: Conn) -> bool:
    cur = await conn.execute("SELECT halted FROM control_halt")
    row = await cur.fetchone()
    return bool(row and row[0])
