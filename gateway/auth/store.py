"""Principals, API keys and login sessions in PostgreSQL (the ``0005_access`` tables).

Every function takes an open connection and runs in the caller's transaction (or its own, when
the connection is in autocommit), so that a change and its audit record commit together.
Nothing here logs a secret: API keys and session tokens are hashed before they reach SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from gateway.auth.model import (
    Principal,
    PrincipalKind,
    Role,
    hash_secret,
    key_hint,
    looks_like_api_key,
    new_api_key,
    new_session_token,
)
from gateway.errors import ConflictError, NotFoundError

__all__ = [
    "LoginOutcome",
    "LoginPolicy",
    "add_api_key",
    "create_principal",
    "create_session",
    "delete_session",
    "disable_principal",
    "get_principal",
    "list_api_keys",
    "list_principals",
    "principal_for_api_key",
    "principal_for_session",
    "record_login",
    "revoke_api_key",
]

_LAST_USED_GRANULARITY: Final = timedelta(seconds=60)
"""``last_used_at`` is refreshed at most this often, so a busy client does not write per call."""


def _principal(row: tuple[Any, ...]) -> Principal:
    pid, name, role, kind = row
    return Principal(id=int(pid), name=str(name), role=Role(role), kind=kind)


async def create_principal(
    conn: AsyncConnection[Any],
    *,
    name: str,
    role: Role,
    kind: PrincipalKind,
    password_hash: str | None = None,
) -> Principal:
    """Insert a principal; ConflictError if the name is taken."""
    if kind == "machine" and password_hash is not None:
        raise ConflictError("machine clients authenticate with API keys, not passwords")
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "INSERT INTO principals (name, role, kind, password_hash) VALUES (%s, %s, %s, %s)"
                " RETURNING id, name, role, kind",
                (name, role.value, kind, password_hash),
            )
            row = await cur.fetchone()
    except psycopg.errors.UniqueViolation:
        raise ConflictError(f"principal {name!r} already exists") from None
    assert row is not None
    return _principal(row)


async def get_principal(conn: AsyncConnection[Any], name: str) -> Principal:
    cur = await conn.execute("SELECT id, name, role, kind FROM principals WHERE name = %s", (name,))
    row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"principal {name!r} does not exist")
    return _principal(row)


async def list_principals(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT p.name, p.role, p.kind, p.created_at, p.disabled_at, p.locked_until,"
            " (SELECT count(*) FROM api_keys k WHERE k.principal_id = p.id"
            "  AND k.revoked_at IS NULL) AS active_keys"
            " FROM principals p ORDER BY p.name"
        )
        return await cur.fetchall()


async def disable_principal(conn: AsyncConnection[Any], name: str) -> None:
    """Disable a principal: its keys stop working and its sessions end at once."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE principals SET disabled_at = coalesce(disabled_at, now()) WHERE name = %s"
            " RETURNING id",
            (name,),
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"principal {name!r} does not exist")
        await conn.execute("DELETE FROM sessions WHERE principal_id = %s", (row[0],))


async def add_api_key(conn: AsyncConnection[Any], name: str, *, label: str = "") -> tuple[int, str]:
    """A new API key for machine client ``name``: ``(key id, the key)``; the key is shown once."""
    principal = await get_principal(conn, name)
    if principal.kind != "machine":
        raise ConflictError(f"{name!r} is a person; people log in with a password")
    api_key = new_api_key()
    cur = await conn.execute(
        "INSERT INTO api_keys (principal_id, key_hash, hint, label) VALUES (%s, %s, %s, %s)"
        " RETURNING id",
        (principal.id, hash_secret(api_key), key_hint(api_key), label),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), api_key


async def list_api_keys(conn: AsyncConnection[Any], name: str) -> list[dict[str, Any]]:
    principal = await get_principal(conn, name)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, hint, label, created_at, last_used_at, revoked_at FROM api_keys"
            " WHERE principal_id = %s ORDER BY id",
            (principal.id,),
        )
        return await cur.fetchall()


async def revoke_api_key(conn: AsyncConnection[Any], key_id: int) -> str:
    """Revoke key ``key_id`` (idempotent); returns its owner's name."""
    cur = await conn.execute(
        "UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now()) FROM principals p"
        " WHERE k.id = %s AND p.id = k.principal_id RETURNING p.name",
        (key_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"API key {key_id} does not exist")
    return str(row[0])


_API_KEY_LOOKUP: Final = (
    "WITH found AS (SELECT k.id AS key_id, k.last_used_at, p.id, p.name, p.role, p.kind"
    " FROM api_keys k JOIN principals p ON p.id = k.principal_id"
    " WHERE k.key_hash = %s AND k.revoked_at IS NULL AND p.disabled_at IS NULL),"
    " touched AS (UPDATE api_keys k SET last_used_at = now() FROM found f"
    " WHERE k.id = f.key_id AND (f.last_used_at IS NULL OR f.last_used_at < now() - %s))"
    " SELECT id, name, role, kind FROM found"
)


async def principal_for_api_key(conn: AsyncConnection[Any], api_key: str) -> Principal | None:
    """The enabled principal holding this unrevoked key, or None.

    One statement (one round trip, and no transaction of its own needed): it finds the key and
    refreshes its ``last_used_at`` when that is older than a minute.
    """
    if not looks_like_api_key(api_key):
        return None
    cur = await conn.execute(_API_KEY_LOOKUP, (hash_secret(api_key), _LAST_USED_GRANULARITY))
    row = await cur.fetchone()
    return _principal(row) if row is not None else None


# -- people: login and sessions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    max_failures: int = 5
    """Consecutive failures that lock an account."""
    lockout: timedelta = timedelta(minutes=15)
    slowdown_after: int = 2
    """Failures after which each further failed attempt is answered more slowly."""
    slowdown_max_s: float = 4.0
    session_idle: timedelta = timedelta(minutes=30)
    session_absolute: timedelta = timedelta(hours=12)
    attempts_per_source_per_min: float = 30.0
    """Login attempts one source address may make (against password spraying many accounts)."""

    def delay_s(self, failures: int) -> float:
        """How long to wait before answering the ``failures``-th consecutive failure."""
        if failures <= self.slowdown_after:
            return 0.0
        return float(min(self.slowdown_max_s, 0.25 * 2 ** (failures - self.slowdown_after - 1)))


LoginResult = Literal["ok", "bad_credentials", "locked", "disabled"]


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    result: LoginResult
    principal: Principal | None
    failures: int
    locked_until: datetime | None = None


async def record_login(
    conn: AsyncConnection[Any],
    name: str,
    *,
    password_ok: bool,
    policy: LoginPolicy,
) -> LoginOutcome:
    """Apply a login attempt whose password check gave ``password_ok`` to ``name``'s account.

    Locks the account row, so concurrent attempts count one after another. A locked or disabled
    account fails even with the right password.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT id, name, role, kind, failed_logins, locked_until > now(), locked_until,"
            " disabled_at IS NOT NULL FROM principals WHERE name = %s AND kind = 'person'"
            " FOR UPDATE",
            (name,),
        )
        row = await cur.fetchone()
        if row is None:
            return LoginOutcome("bad_credentials", None, 0)
        principal = _principal(row[:4])
        failures, locked, locked_until, disabled = int(row[4]), bool(row[5]), row[6], row[7]
        if disabled:
            return LoginOutcome("disabled", principal, failures)
        if locked:
            return LoginOutcome("locked", principal, failures, locked_until)
        if password_ok:
            await conn.execute(
                "UPDATE principals SET failed_logins = 0, locked_until = NULL WHERE id = %s",
                (principal.id,),
            )
            return LoginOutcome("ok", principal, 0)
        failures += 1
        lock = failures >= policy.max_failures
        cur = await conn.execute(
            "UPDATE principals SET failed_logins = %s, last_failed_at = now(),"
            " locked_until = CASE WHEN %s THEN now() + %s ELSE NULL END"
            " WHERE id = %s RETURNING locked_until",
            (0 if lock else failures, lock, policy.lockout, principal.id),
        )
        updated = await cur.fetchone()
        assert updated is not None
        return LoginOutcome(
            "locked" if lock else "bad_credentials", principal, failures, updated[0]
        )


async def password_hash_of(conn: AsyncConnection[Any], name: str) -> str | None:
    cur = await conn.execute(
        "SELECT password_hash FROM principals WHERE name = %s AND kind = 'person'", (name,)
    )
    row = await cur.fetchone()
    return None if row is None else row[0]


async def create_session(
    conn: AsyncConnection[Any], principal: Principal, *, policy: LoginPolicy, source: str | None
) -> str:
    """A new session for ``principal``; returns the token for the cookie (shown once)."""
    token = new_session_token()
    await conn.execute(
        "INSERT INTO sessions (token_hash, principal_id, expires_at, source)"
        " VALUES (%s, %s, now() + %s, %s)",
        (hash_secret(token), principal.id, policy.session_absolute, source),
    )
    return token


async def principal_for_session(
    conn: AsyncConnection[Any], token: str, *, policy: LoginPolicy
) -> Principal | None:
    """The principal of a live session (touching its idle timer), or None if expired/unknown."""
    if not token or len(token) > 100:
        return None
    cur = await conn.execute(
        "UPDATE sessions s SET last_seen_at = now() FROM principals p"
        " WHERE s.token_hash = %s AND p.id = s.principal_id AND p.disabled_at IS NULL"
        " AND s.expires_at > now() AND s.last_seen_at > now() - %s"
        " RETURNING p.id, p.name, p.role, p.kind",
        (hash_secret(token), policy.session_idle),
    )
    row = await cur.fetchone()
    return _principal(row) if row is not None else None


async def delete_session(conn: AsyncConnection[Any], token: str) -> None:
    await conn.execute("DELETE FROM sessions WHERE token_hash = %s", (hash_secret(token),))
    await conn.execute("DELETE FROM sessions WHERE expires_at < now()")
