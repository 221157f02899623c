"""Credentials for tests: ``auth_headers(database_url, Role.X)`` → a Bearer header.

Each call creates a machine principal with that role (and a fresh API key) in that database.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from gateway.auth import store
from gateway.http.security import Role

AuthHeaders = Callable[[str, Role], Awaitable[dict[str, str]]]


async def make_api_key(database_url: str, role: Role, name: str | None = None) -> str:
    name = name or f"test-{role.value}-{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await store.create_principal(conn, name=name, role=role, kind="machine")
        _, api_key = await store.add_api_key(conn, name)
        await conn.commit()
    return api_key


@pytest.fixture
def auth_headers() -> AuthHeaders:
    async def headers(database_url: str, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {await make_api_key(database_url, role)}"}

    return headers
