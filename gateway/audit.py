"""The append-only audit log: who did what to which object, and how it ended.

``record`` is written in the caller's transaction so an action and its audit entry commit or
roll back together. Details never carry keys or passwords.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg

__all__ = ["record"]

log = logging.getLogger("gateway.audit")


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
    """Record one audited action (this version logs it; the table-backed log replaces it)."""
    del conn
    log.info(
        "audit %s %s: %s",
        action,
        object,
        outcome,
        extra={
            "actor": actor,
            "source": source,
            "request_id": request_id,
            "detail": dict(detail or {}),
        },
    )
