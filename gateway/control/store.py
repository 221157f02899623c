"""The stored credit-control policy: numbered versions, the highest in force.

With no version stored the defaults are in force as version 0; the first change stores
version 1. A change is a partial update of the version in force, validated whole, stored as a
new version and audited in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from gateway import audit
from gateway.control.policy import DEFAULT_POLICY, Policy, policy_from_json, policy_to_json
from gateway.errors import ConflictError

__all__ = ["current_policy", "save_policy"]


async def current_policy(conn: psycopg.AsyncConnection[Any]) -> tuple[int, Policy]:
    """The policy in force and its version (0: the defaults, never changed)."""
    cur = await conn.execute(
        "SELECT version, policy FROM control_policies ORDER BY version DESC LIMIT 1"
    )
    row = await cur.fetchone()
    if row is None:
        return 0, DEFAULT_POLICY
    return int(row[0]), policy_from_json(row[1])


async def save_policy(
    conn: psycopg.AsyncConnection[Any], changes: Mapping[str, Any], *, actor: str
) -> tuple[int, Policy]:
    """Store the policy in force with ``changes`` applied as the next version."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE control_policies IN SHARE ROW EXCLUSIVE MODE")
        version, base = await current_policy(conn)
        policy = policy_from_json(changes, base)
        try:
            await conn.execute(
                "INSERT INTO control_policies (version, policy, created_by) VALUES (%s, %s, %s)",
                (version + 1, psycopg.types.json.Jsonb(policy_to_json(policy)), actor),
            )
        except psycopg.errors.UniqueViolation as exc:  # pragma: no cover - the lock prevents it
            raise ConflictError("the policy changed meanwhile; try again") from exc
        await audit.record(
            conn,
            actor=actor,
            action="control.policy",
            object=f"control_policy:{version + 1}",
            outcome="stored",
            detail={"changes": {k: str(v) for k, v in changes.items()}},
        )
    return version + 1, policy
