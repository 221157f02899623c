"""Audit log of who did what (placeholder until the access-control work lands).

``record`` is the interface the rest of the gateway codes against: one append-only entry per
audited action, written in the caller's transaction. This placeholder writes the entry to the
``gateway.audit`` logger only; the real implementation stores it in the ``audit_log`` table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg

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
    del conn
    log.info(
        "audit: %s %s by %s: %s",
        action,
        object,
        actor or "-",
        outcome,
        extra={
            "audit_action": action,
            "audit_object": object,
            "audit_actor": actor,
            "audit_outcome": outcome,
            "audit_source": source,
            "request_id": request_id,
            "audit_detail": dict(detail or {}),
        },
    )
