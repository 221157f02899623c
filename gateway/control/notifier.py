"""The notifier: drains the notification outbox (alerts and credit-control notices) through a
channel, one row at a time.

A row is locked (``FOR UPDATE SKIP LOCKED``), sent, and marked sent in the same transaction, so
two notifiers never send the same row and a sent row is never picked again. A crash between
the channel accepting a message and the commit can repeat that one message: every message
carries the outbox id as its idempotency key (``Idempotency-Key`` for the webhook), on which
the receiver dedupes. A notice's delivery day is the day it reached the customer, from which
the final-notice period runs.

Channels: :class:`LogChannel` (the default: one log line per message, for deployments
without an SMS aggregator) and :class:`WebhookChannel` (HTTP POST of the JSON payload to an
aggregator, retried with backoff on transport errors and 5xx answers through ``stamina``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx
import psycopg
import stamina

from gateway import audit
from gateway.errors import GatewayError

__all__ = [
    "MAX_ATTEMPTS",
    "Channel",
    "DeliveryError",
    "LogChannel",
    "WebhookChannel",
    "drain_once",
    "run_notifier",
]

log = logging.getLogger(__name__)

#: failed rounds after which an outbox row is given up (left unsent for an operator)
MAX_ATTEMPTS = 20


class DeliveryError(GatewayError):
    """A channel could not deliver a message (after its retries)."""


class Channel(Protocol):
    """Somewhere messages go. ``send`` returns once the message is accepted."""

    name: str

    async def send(self, key: str, payload: Mapping[str, Any]) -> None: ...


class LogChannel:
    """Writes each message to the log (contact numbers are not logged)."""

    name = "log"

    async def send(self, key: str, payload: Mapping[str, Any]) -> None:
        log.info(
            "notification %s: %s",
            key,
            payload.get("text") or payload.get("kind") or "alert",
            extra={"account_id": payload.get("account_id"), "meter_id": payload.get("meter_id")},
        )


class _RetryableStatusError(Exception):
    pass


class WebhookChannel:
    """POSTs each message as JSON to an SMS aggregator (or any webhook)."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        attempts: int = 4,
        timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._attempts = attempts

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, key: str, payload: Mapping[str, Any]) -> None:
        try:
            async for attempt in stamina.retry_context(
                on=(httpx.TransportError, _RetryableStatusError),
                attempts=self._attempts,
                wait_initial=0.2,
                wait_max=5.0,
            ):
                with attempt:
                    response = await self._client.post(
                        self._url, json=dict(payload), headers={"Idempotency-Key": key}
                    )
                    if response.status_code >= 500 or response.status_code == 429:
                        raise _RetryableStatusError(response.status_code)
        except (httpx.TransportError, _RetryableStatusError) as exc:
            raise DeliveryError(f"webhook delivery failed: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise DeliveryError(f"webhook refused the message: HTTP {response.status_code}")


async def drain_once(
    conn: psycopg.AsyncConnection[Any], channel: Channel, *, zone: ZoneInfo, limit: int = 100
) -> int:
    """Send up to ``limit`` unsent rows; returns how many were sent. A row that fails is
    left for a later round (and passed over in this one); after ``MAX_ATTEMPTS`` failed
    rounds it is given up, with one error in the log, and stays unsent for an operator."""
    sent = 0
    failed: list[int] = []
    for _ in range(limit):
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT id, notice_id, payload FROM alert_outbox WHERE sent_at IS NULL"
                " AND attempts < %s AND id <> ALL(%s)"
                " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                (MAX_ATTEMPTS, failed),
            )
            row = await cur.fetchone()
            if row is None:
                return sent
            outbox_id, notice_id, payload = row
            key = f"outbox-{outbox_id}"
            try:
                await channel.send(key, payload)
            except DeliveryError as exc:
                cur = await conn.execute(
                    "UPDATE alert_outbox SET attempts = attempts + 1 WHERE id = %s"
                    " RETURNING attempts",
                    (outbox_id,),
                )
                got = await cur.fetchone()
                if got is not None and got[0] >= MAX_ATTEMPTS:
                    log.error("notification %s given up after %d attempts: %s", key, got[0], exc)
                else:
                    log.warning("notification %s not delivered: %s", key, exc)
                failed.append(int(outbox_id))
                continue
            await conn.execute(
                "UPDATE alert_outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = %s",
                (outbox_id,),
            )
            if notice_id is not None:
                await _served(conn, int(notice_id), payload, zone, channel.name)
            sent += 1
    return sent


async def _served(
    conn: psycopg.AsyncConnection[Any],
    notice_id: int,
    payload: Mapping[str, Any],
    zone: ZoneInfo,
    channel: str,
) -> None:
    today = datetime.now(UTC).astimezone(zone).date()
    await conn.execute(
        "UPDATE control_notices SET served_on = %s WHERE notice_id = %s", (today, notice_id)
    )
    kind = payload.get("kind")
    account_id = str(payload.get("account_id"))
    if kind in ("notice", "final_notice"):
        column = "notice_served_on" if kind == "notice" else "final_notice_served_on"
        await conn.execute(
            f"INSERT INTO control_accounts (account_id, {column}) VALUES (%s, %s)"
            f" ON CONFLICT (account_id) DO UPDATE SET {column} = excluded.{column},"
            " updated_at = now()",
            (account_id, today),
        )
    await audit.record(
        conn,
        actor="notifier",
        action="control.notice",
        object=f"account:{account_id}",
        outcome="delivered",
        detail={"notice_id": notice_id, "kind": kind, "channel": channel},
    )


async def run_notifier(
    conninfo: str,
    channel: Channel,
    stop: asyncio.Event,
    *,
    zone: ZoneInfo,
    interval_s: float = 2.0,
) -> None:
    """Drain the outbox until ``stop`` is set, waiting ``interval_s`` when it is empty.

    The notifier keeps one connection of its own (reopened after a failure) rather than
    taking one from the service's pool, so it never competes with HTTP requests or ingest.
    """
    conn: psycopg.AsyncConnection[Any] | None = None
    try:
        while not stop.is_set():
            sent = 0
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                sent = await drain_once(conn, channel, zone=zone)
            except psycopg.OperationalError as exc:
                log.warning("notifier: database unavailable (%s)", type(exc).__name__)
                if conn is not None:
                    await conn.close()
                conn = None
            if sent == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        if conn is not None:
            await conn.close()
