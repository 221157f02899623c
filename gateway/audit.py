"""Audit log: who did what to which object, with what outcome (append-only).

Placeholder until the access-control feature lands: records go to the ``audit_log`` table
when it exists, in the caller's transaction, and to the ``gateway.audit`` logger otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = ["record"]

log = logging.getLogger(__name__)


async def record(
    conn: psycopg.AsyncConnection[Any],
    *,
    actor: str | None,
    action: str,
    object: str,
    outcome: str,
    source: str | None = None,
    request_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Append one audit record in the caller's transaction."""
    cur = await conn.execute("SELECT to_regclass('audit_log') IS NOT NULL")
    row = await cur.fetchone()
    if row is not None and row[0]:
        await conn.execute(
            "INSERT INTO audit_log (actor, action, object, outcome, source, request_id, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (actor, action, object, outcome, source, request_id, Jsonb(dict(detail or {}))),
        )
        return
    log.info(
        "audit %s %s: %s",
        action,
        object,
        outcome,
        extra={"actor": actor, "source": source, "request_id": request_id},
    )
