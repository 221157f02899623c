"""The command loop: signs, publishes and follows commands to meters until each is confirmed
from the meter's own state, or ends with a reason.

One pass (:meth:`CommandLoop.tick`), each step its own transaction:

1. apply the meters' replies (``ok`` acknowledges; a refusal is recorded and escalated) and
2. confirm commands whose meter has since reported the ordered state
   (:mod:`gateway.control.readback`);
3. look after commands whose confirmation time passed (probe, retry, give up; wait for an
   offline meter, re-issue an expired command when it is back and the order still stands:
   :mod:`gateway.control.supervise`);
4. sign the planned commands that may go now: credit-control orders only inside the execution
   window, below the rate limit and while execution is not halted, each re-checked against the
   account's current facts right before signing;
5. publish every signed message not yet published.

A message is committed (signed, with a fresh id and nonce) before it is published, and marked
published after the broker's PUBACK. A crash in between publishes the same bytes again on the
next pass: the meter refuses a repeat as ``replayed``, which for a message published more than
once counts as its acknowledgement. Nothing is lost, and no command is carried out twice.

Each step's statements go to PostgreSQL in pipeline mode (results are read by fetching, never
``rowcount``), so a step costs few round trips however many commands it handles. Several
gateways may run the loop: a PostgreSQL advisory lock lets one of them work at a time.
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
from gateway.control.commands import finish
from gateway.control.execution import halted
from gateway.control.lifecycle import CommandState
from gateway.control.policy import Policy
from gateway.control.readback import ACTOR, apply_replies, confirm
from gateway.control.store import current_policy
from gateway.control.supervise import still_stands, supervise, windowed_budget
from gateway.control.window import in_window
from gateway.errors import KeyStoreError
from gateway.keystore.base import KeyStore
from protocols.commands import CommandAction
from protocols.topics import Topics

__all__ = ["CommandLoop", "LoopOptions", "Publisher"]

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]
Publisher = Callable[[str, bytes], Awaitable[None]]
"""Publishes with QoS 1 and returns once the broker acknowledged it."""

_LOCK_KEY: Final = 0x6D676377  # one command loop at a time across gateways
_MAX_PUBLISH_FAILURES: Final = 20


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
                batch = self._options.batch
                done = await apply_replies(
                    conn, batch=batch, confirm_timeout=timedelta(seconds=policy.confirm_timeout_s)
                )
                confirmed, self._confirm_after = await confirm(
                    conn, batch=batch, after=self._confirm_after
                )
                done += confirmed
                done += await supervise(conn, policy, self._sign, batch=batch)
                done += await self._dispatch(conn, policy)
                done += await self._publish_pending(conn, policy)
                return done
            finally:
                await conn.rollback()
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
                await conn.commit()

    # -------------------------------------------------------------- signing

    async def _dispatch(self, conn: Conn, policy: Policy) -> int:
        now = datetime.now(UTC)
        async with conn.transaction(), conn.pipeline():
            # The window, not the instant computed when it was ordered, decides for a
            # credit-control order: a changed policy applies to orders already waiting.
            budget = await windowed_budget(conn, policy, now)
            rows: list[tuple[Any, ...]] = []
            for windowed, limit in ((False, self._options.batch), (True, budget)):
                if limit <= 0:
                    continue
                cur = await conn.execute(
                    "SELECT command_id, meter_id, action, origin FROM meter_commands"
                    " WHERE state = 'planned' AND attempts = 0 AND windowed = %s"
                    " AND (windowed OR not_before <= now())"
                    " ORDER BY command_id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (windowed, min(limit, self._options.batch)),
                )
                rows += await cur.fetchall()
            signed = 0
            # attempts = 0: once a command is signed, its message is only ever published again.
            for command_id, meter_id, action, origin in rows:
                if not await still_stands(conn, command_id, origin):
                    continue
                if not await self._sign(conn, command_id, meter_id, CommandAction(action), policy):
                    continue
                await conn.execute(
                    "UPDATE meter_commands SET attempts = attempts + 1 WHERE command_id = %s",
                    (command_id,),
                )
                signed += 1
        return signed

    async def _sign(
        self, conn: Conn, command_id: int, meter_id: str, action: CommandAction, policy: Policy
    ) -> bool:
        """Sign a message for the command with a fresh id and nonce, and store it unpublished.

        A meter the key store holds no command key for cannot be sent anything: its command
        ends ``rejected`` (and the meter goes on the work list) instead of stopping the pass.
        """
        issued = datetime.now(UTC).replace(microsecond=0)
        try:
            async with conn.transaction():  # a savepoint: a failure here spoils nothing else
                command = await self._keystore.sign_command(
                    conn,
                    meter_id=meter_id,
                    command_id=uuid.uuid4().hex,
                    action=action,
                    issued_at=issued,
                    ttl=timedelta(seconds=policy.command_ttl_s),
                    nonce=secrets.token_hex(16),
                )
        except KeyStoreError as exc:
            log.warning("cannot sign a command: %s", exc, extra={"meter_id": meter_id})
            await finish(
                conn,
                command_id,
                CommandState.REJECTED,
                f"cannot sign it: {exc}",
                actor=ACTOR,
            )
            return False
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
        return True

    # -------------------------------------------------------------- publishing

    async def _count_failures(self, conn: Conn, failed: list[tuple[Any, ...]]) -> None:
        """Count failed publishes; a message the broker keeps refusing ends its command."""
        cur = await conn.execute(
            "UPDATE command_messages SET publish_failures = publish_failures + 1"
            " WHERE message_id = ANY(%s) AND published_at IS NULL"
            " RETURNING message_id, command_id, publish_failures",
            ([r[0] for r in failed],),
        )
        for _, command_id, failures in await cur.fetchall():
            if failures >= _MAX_PUBLISH_FAILURES:
                await finish(
                    conn,
                    command_id,
                    CommandState.REJECTED,
                    f"the broker did not take it in {failures} tries",
                    actor=ACTOR,
                )

    async def _publish_pending(self, conn: Conn, policy: Policy) -> int:
        cur = await conn.execute(
            "SELECT m.message_id, m.meter_id, m.payload, m.command_id FROM command_messages m"
            " JOIN meter_commands c USING (command_id)"
            " WHERE m.published_at IS NULL AND c.state IN ('planned', 'sent', 'acknowledged',"
            " 'expired') AND (NOT c.windowed OR %s)"
            " ORDER BY m.publish_failures, m.created_at, m.message_id LIMIT %s",
            # Signed credit-control orders wait while execution is halted or the window shut.
            (in_window(datetime.now(UTC), policy) and not await halted(conn), self._options.batch),
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
        failed = [r for r, ok in zip(rows, results, strict=True) if not ok]
        async with conn.transaction():
            if published:
                await conn.execute(
                    "UPDATE command_messages SET publishes = publishes + 1,"
                    " published_at = now() WHERE message_id = ANY(%s) AND published_at IS NULL",
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
                await conn.cursor().executemany(
                    audit.INSERT,
                    [
                        audit.values(
                            actor=ACTOR,
                            action="command.publish",
                            object=f"meter:{r[1]}",
                            outcome="published",
                            detail={"command_id": r[3], "message_id": r[0]},
                        )
                        for r, ok in zip(rows, results, strict=True)
                        if ok
                    ],
                )
            if failed:
                await self._count_failures(conn, failed)
        return len(published)
