"""Keypad delivery: tokens of fresh sales published to online meters (docs/protocol.md §8).

The sale's transaction leaves its tokens ``issued``; this outbox drain publishes each token of
a meter that is online over MQTT to ``meters/{id}/keypad`` as ``{"id": "<receipt_no>-<seq>",
"token": "…"}`` (QoS 1, in issue order: key change first), then marks it ``delivered`` — and the
sale too once all its tokens are. The meter answers ``token_accepted`` / ``token_rejected`` with
that id, which the database matches back to the token (migration 0008's trigger).

A crash between publishing and marking publishes again at the next pass; the meter refuses the
repeat (its TID is remembered) after it accepted the first, and a result for a token already
accepted or rejected is ignored. Reversed sales and sales older than ``max_age`` are not
delivered. Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several gateways can drain;
each publish is bounded by ``publish_timeout_s`` so that a broker outage never holds the claim
(and its row locks) for long: what was not confirmed goes out again at a later pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from protocols.topics import Topics

__all__ = ["Publisher", "deliver_pending", "run_delivery"]

log = logging.getLogger(__name__)

Publisher = Callable[[str, bytes], Awaitable[None]]
"""Publishes a payload to a topic with QoS 1 and returns once the broker acknowledged it."""


async def deliver_pending(
    pool: AsyncConnectionPool[Any],
    publish: Publisher,
    topics: Topics,
    *,
    limit: int = 200,
    max_age: timedelta = timedelta(hours=1),
    publish_timeout_s: float = 10.0,
) -> int:
    """One pass: publish up to ``limit`` undelivered tokens; returns how many went out."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT t.token_id, t.sale_id, t.meter_id, s.receipt_no, t.seq, t.token"
            " FROM vend_tokens t JOIN sales s USING (sale_id)"
            " JOIN meters m ON m.meter_id = t.meter_id"
            " WHERE t.state = 'issued' AND t.delivered_at IS NULL AND s.state = 'issued'"
            " AND m.online AND m.transport = 'mqtt' AND s.issued_at > now() - %s"
            " ORDER BY t.token_id LIMIT %s FOR UPDATE OF t, s SKIP LOCKED",
            (max_age, limit),
        )
        rows = await cur.fetchall()
        delivered: list[int] = []
        sales: set[int] = set()
        failure: Exception | None = None
        for token_id, sale_id, meter_id, receipt_no, seq, token in rows:
            body = orjson.dumps({"id": f"{receipt_no}-{seq}", "token": token})
            try:
                async with asyncio.timeout(publish_timeout_s):
                    await publish(topics.keypad(meter_id), body)
            except Exception as exc:  # re-raised once what went out is recorded
                failure = exc
                break
            delivered.append(token_id)
            sales.add(sale_id)
        if delivered:
            await conn.execute(
                "UPDATE vend_tokens SET state = 'delivered', delivered_at = now()"
                " WHERE token_id = ANY(%s) AND state = 'issued'",
                (delivered,),
            )
            await conn.execute(
                "UPDATE sales s SET state = 'delivered' WHERE sale_id = ANY(%s)"
                " AND state = 'issued' AND NOT EXISTS (SELECT 1 FROM vend_tokens t"
                " WHERE t.sale_id = s.sale_id AND t.state = 'issued')",
                (list(sales),),
            )
    if failure is not None:
        raise failure
    return len(delivered)


async def run_delivery(
    pool: AsyncConnectionPool[Any],
    publish: Publisher,
    topics: Topics,
    stop: asyncio.Event,
    *,
    interval_s: float = 0.5,
) -> None:
    """Drain the keypad outbox every ``interval_s`` (sooner while there is a backlog)."""
    failing = False
    while not stop.is_set():
        sent = 0
        try:
            sent = await deliver_pending(pool, publish, topics)
            if failing:
                log.info("keypad delivery recovered")
            failing = False
        except Exception as exc:  # the loop outlives a broker or database outage
            if not failing:
                log.error("keypad delivery failing: %s", exc)
            failing = True
        if sent == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
