"""Credentials for API tests (placeholder key store until the access-control work lands)."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable

import pytest

from gateway.http.security import Principal, Role, register_api_key

_ids = itertools.count(1)


@pytest.fixture
def auth_headers() -> Callable[[str, Role], Awaitable[dict[str, str]]]:
    """``await auth_headers(database_url, role)`` → headers of a machine principal."""

    async def make(database_url: str, role: Role) -> dict[str, str]:
        del database_url
        key = secrets.token_urlsafe(24)
        n = next(_ids)
        register_api_key(key, Principal(n, f"test-{role.value}-{n}", role, "machine"))
        return {"Authorization": f"Bearer {key}"}

    return make
