"""Credentials for tests, and a guard that no test secret ever reaches a log.

``auth_headers(database_url, Role.X)`` creates a machine principal with that role (and a fresh
API key) in that database and returns ``{"Authorization": "Bearer <key>"}``.

Every secret a test creates through this module (API keys, passwords, key-store keys) is
registered with :func:`remember_secret`; a session-wide log handler keeps every log record of
the run (message and structured extras), and the session fails at the end if any registered
secret appears in any of them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator

import psycopg
import pytest

from gateway.auth import store
from gateway.http.security import Role
from gateway.logs import JsonFormatter

AuthHeaders = Callable[[str, Role], Awaitable[dict[str, str]]]

_SECRETS: set[str] = set()


def remember_secret(secret: str | bytes) -> None:
    """Register a secret (text, or bytes: checked as lower- and upper-case hex)."""
    if isinstance(secret, bytes):
        _SECRETS.add(secret.hex())
        _SECRETS.add(secret.hex().upper())
    else:
        _SECRETS.add(secret)


async def make_api_key(database_url: str, role: Role, name: str | None = None) -> str:
    name = name or f"test-{role.value}-{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await store.create_principal(conn, name=name, role=role, kind="machine")
        _, api_key = await store.add_api_key(conn, name)
        await conn.commit()
    remember_secret(api_key)
    return api_key


@pytest.fixture
def auth_headers() -> AuthHeaders:
    async def headers(database_url: str, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {await make_api_key(database_url, role)}"}

    return headers


class _KeepAll(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is kept raw
            self.lines.append(repr(record.__dict__))


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """Fail the run if a registered test secret appears in any log record of the run."""
    handler = _KeepAll()
    root = logging.getLogger()
    root.addHandler(handler)
    watched = [logging.getLogger(n) for n in ("gateway", "firmware_sim", "tokens", "uvicorn")]
    before = [w.level for w in watched]
    for w in watched:
        w.setLevel(logging.DEBUG)
    yield
    for w, level in zip(watched, before, strict=True):
        w.setLevel(level)
    root.removeHandler(handler)
    leaks = [(s[:8] + "…", line[:200]) for s in _SECRETS for line in handler.lines if s in line]
    assert not leaks, f"secrets found in log records: {leaks[:5]}"
