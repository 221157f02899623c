"""The audit log: who did what to which object, when, from where, and how it ended.

:func:`record` appends one row in the caller's transaction, so that a change and its record
commit (or roll back) together. The table refuses UPDATE, DELETE and TRUNCATE (a trigger in
migration 0005), so the log only grows. Details must never carry a secret: callers pass names,
ids and outcomes, never keys, tokens or passwords.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

__all__ = ["INSERT", "Origin", "query", "record", "values"]

_MAX_TEXT: Final = 500


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an HTTP request came from, for the record that the code serving it writes itself
    (instead of the middleware's): the client's address and the request id (``X-Request-ID``)."""

    address: str | None = None
    http_request_id: str | None = None


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:_MAX_TEXT]


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
    """Append one audit record (in the caller's transaction)."""
    await conn.execute(
        INSERT,
        values(
            actor=actor,
            action=action,
            object=object,
            outcome=outcome,
            source=source,
            request_id=request_id,
            detail=detail,
        ),
    )


INSERT: Final = (
    "INSERT INTO audit_log (actor, action, object, outcome, source, request_id, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
"""The statement :func:`record` runs, for a caller that sends it within one of its own (a
``WITH`` clause) with the parameters of :func:`values`."""


def values(
    *,
    actor: str | None,
    action: str,
    object: str,
    outcome: str,
    source: str | None = None,
    request_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT` for one record (texts clipped, detail as JSON)."""
    return (
        _clip(actor),
        _clip(action),
        _clip(object),
        _clip(outcome),
        _clip(source),
        _clip(request_id),
        Jsonb(dict(detail or {})),
    )


async def query(
    conn: psycopg.AsyncConnection[Any],
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit records, newest first; pass the last id of a page as ``before_id`` for the next."""
    conditions = ["true"]
    params: list[Any] = []
    for clause, value in (
        ("actor = %s", actor),
        ("action = %s", action),
        ("outcome = %s", outcome),
        ("at >= %s", since),
        ("at < %s", until),
        ("id < %s", before_id),
    ):
        if value is not None:
            conditions.append(clause)
            params.append(value)
    params.append(limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, at, actor, action, object, outcome, source, request_id, detail"
            f" FROM audit_log WHERE {' AND '.join(conditions)} ORDER BY id DESC LIMIT %s",
            params,
        )
        return await cur.fetchall()
