"""Credentials for tests: ``auth_headers(database_url, role)`` → an Authorization header."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable

import pytest

from gateway.http.security import Principal, Role, register_api_key

_ids = itertools.count(1_000_000)


@pytest.fixture
def auth_headers() -> Callable[[str, Role], Awaitable[dict[str, str]]]:
    async def make(database_url: str, role: Role) -> dict[str, str]:
        del database_url
        number = next(_ids)
        key = secrets.token_urlsafe(24)
        register_api_key(key, Principal(number, f"{role.value}-{number}", role, "machine"))
        return {"Authorization": f"Bearer {key}"}

    return make
