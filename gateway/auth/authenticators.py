"""Ways in: each authenticator turns a request's credentials into a principal.

:class:`Authenticator` is the one interface the HTTP layer talks to. API keys (machine clients,
``Authorization: Bearer mgw_…``) and session cookies (people, after a password login) are the
two implemented here; the municipality's single sign-on (OpenID Connect: verify the ID token or
exchange the code, then map the subject to a principal) is a third class with the same shape.

An authenticator answers None when the request carries none of *its* credentials, a principal
when they are valid, and raises :class:`AuthError` when they are present but invalid (so a bad
key is never silently treated as "try the next way in").
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Final, Protocol

from psycopg import AsyncConnection

from gateway.auth.model import Principal, csrf_token_for
from gateway.auth.store import LoginPolicy, principal_for_api_key, principal_for_session
from gateway.errors import AuthError, ForbiddenError

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "ApiKeyAuthenticator",
    "Authenticator",
    "Credentials",
    "SessionAuthenticator",
]

SESSION_COOKIE: Final = "gw_session"
CSRF_HEADER: Final = "x-csrf-token"
CSRF_FIELD: Final = "csrf_token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presents, extracted once by the HTTP layer (no framework types here)."""

    method: str
    authorization: str | None
    session_cookie: str | None
    csrf_token: str | None
    """From the ``X-CSRF-Token`` header or the form field ``csrf_token``."""

    def __repr__(self) -> str:  # never show the secrets
        return f"Credentials(method={self.method!r})"


class Authenticator(Protocol):
    name: str

    async def authenticate(
        self, credentials: Credentials, conn: AsyncConnection[Any]
    ) -> Principal | None: ...


class ApiKeyAuthenticator:
    """Machine clients: ``Authorization: Bearer <api key>``."""

    name = "api-key"

    async def authenticate(
        self, credentials: Credentials, conn: AsyncConnection[Any]
    ) -> Principal | None:
        header = credentials.authorization
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        principal = await principal_for_api_key(conn, value.strip())
        if principal is None:
            raise AuthError("invalid or revoked API key")
        return principal


class SessionAuthenticator:
    """People: the session cookie set by a password login; unsafe methods need the CSRF token."""

    name = "session"

    def __init__(self, policy: LoginPolicy) -> None:
        self._policy = policy

    async def authenticate(
        self, credentials: Credentials, conn: AsyncConnection[Any]
    ) -> Principal | None:
        token = credentials.session_cookie
        if not token:
            return None
        principal = await principal_for_session(conn, token, policy=self._policy)
        if principal is None:
            raise AuthError("session expired or unknown; log in again")
        if credentials.method not in SAFE_METHODS:
            given = credentials.csrf_token or ""
            if not hmac.compare_digest(given.encode(), csrf_token_for(token).encode()):
                raise ForbiddenError("CSRF token missing or wrong")
        return principal
