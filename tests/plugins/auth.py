"""Credentials for HTTP tests: ``auth_headers(database_url, role)`` -> Authorization header.

Placeholder until the access-control feature lands: it keeps machine principals' key hashes
in an ``api_keys`` table of the test's database.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from gateway.http.security import Role


@pytest.fixture
def auth_headers() -> Callable[[str, Role], Awaitable[dict[str, str]]]:
    async def make(database_url: str, role: Role) -> dict[str, str]:
        key = secrets.token_urlsafe(24)
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS api_keys (id bigint GENERATED ALWAYS AS IDENTITY"
                " PRIMARY KEY, name text NOT NULL, role text NOT NULL, kind text NOT NULL,"
                " key_sha256 text NOT NULL UNIQUE)"
            )
            await conn.execute(
                "INSERT INTO api_keys (name, role, kind, key_sha256)"
                " VALUES (%s, %s, 'machine', %s)",
                (
                    f"test-{role.value}-{key[:6]}",
                    role.value,
                    hashlib.sha256(key.encode()).hexdigest(),
                ),
            )
        return {"Authorization": f"Bearer {key}"}

    return make
