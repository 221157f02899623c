"""``Idempotency-Key`` for state-changing requests: a replayed request takes effect once.

A client (the field page's offline queue, or any API client) sends a unique key with an unsafe
request. The first request with that key runs and its answer is stored; a repeat gets the
stored answer (with ``Idempotent-Replayed: true``) instead of running again, a repeat while the
first still runs gets 409, and a key reused for another method, path or principal gets 422.
Answers that say "try again" (401, 403, 429, 5xx) are not kept, so the request can be sent again
once the cause is gone (a new login, for instance). Requests without the header are untouched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import psycopg
from fastapi import FastAPI, Request, Response
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.authenticators import SAFE_METHODS
from gateway.errors import GatewayError
from gateway.http.errors import error_response
from gateway.http.security import optional_principal

__all__ = ["HEADER", "IdempotencyMiddleware", "install_idempotency"]

log = logging.getLogger(__name__)

HEADER: Final = "Idempotency-Key"
_KEY = re.compile(r"^[A-Za-z0-9_.:-]{8,100}$")
_MAX_STORED_BYTES: Final = 256 * 1024


def _keepable(status: int) -> bool:
    return status < 500 and status not in (401, 403, 408, 429)


_HEADER_BYTES: Final = HEADER.lower().encode()


class IdempotencyMiddleware:
    """Plain ASGI in front: a request without the header (nearly all) passes straight through;
    only one that carries it pays for Starlette's ``BaseHTTPMiddleware`` (a task and a body
    stream per request), which lets the answer be read and stored."""

    def __init__(
        self, app: ASGIApp, pool_of: Callable[[Request], AsyncConnectionPool[Any]]
    ) -> None:
        self.app = app
        self.keyed = BaseHTTPMiddleware(app, dispatch=partial(_idempotency, pool_of=pool_of))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] not in SAFE_METHODS
            and any(name == _HEADER_BYTES for name, _ in scope["headers"])
        ):
            await self.keyed(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def install_idempotency(
    app: FastAPI, pool_of: Callable[[Request], AsyncConnectionPool[Any]]
) -> None:
    """Honour ``Idempotency-Key`` on every unsafe request of ``app``."""
    app.add_middleware(IdempotencyMiddleware, pool_of=pool_of)


async def _idempotency(
    request: Request,
    call_next: Callable[[Request], Awaitable[Response]],
    *,
    pool_of: Callable[[Request], AsyncConnectionPool[Any]],
) -> Response:
    key = request.headers.get(HEADER)
    if key is None or request.method in SAFE_METHODS:
        return await call_next(request)
    if not _KEY.fullmatch(key):
        return error_response(
            422, "invalid_request", "Idempotency-Key: expected 8-100 of [A-Za-z0-9_.:-]"
        )
    try:
        principal = await optional_principal(request)
    except GatewayError:
        principal = None
    if principal is None:  # the route answers 401/403/429 itself; nothing to remember
        return await call_next(request)
    owner = f"{principal.kind}:{principal.name}"
    path = request.url.path
    pool = pool_of(request)
    try:
        async with pool.connection(timeout=5.0) as conn:
            cur = await conn.execute(
                "INSERT INTO idempotency_keys (owner, key, method, path)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (owner, key) DO NOTHING",
                (owner, key, request.method, path),
            )
            fresh = cur.rowcount == 1
            stored = None
            if not fresh:
                cur = await conn.execute(
                    "SELECT method, path, state, status, media_type, body"
                    " FROM idempotency_keys WHERE owner = %s AND key = %s",
                    (owner, key),
                )
                stored = await cur.fetchone()
    except (psycopg.Error, PoolTimeout):
        return error_response(
            503,
            "unavailable",
            "cannot check the idempotency key now; try again later",
            headers={"Retry-After": "1"},
        )
    if not fresh:
        if stored is None:  # deleted in between: the first attempt failed; run this one
            return await call_next(request)
        method, stored_path, state, status, media_type, body = stored
        if (method, stored_path) != (request.method, path):
            return error_response(
                422, "idempotency_key_reused", "this Idempotency-Key belongs to another request"
            )
        if state == "pending":
            return error_response(
                409, "in_progress", "the first request with this Idempotency-Key still runs"
            )
        replay = Response(content=bytes(body or b""), status_code=status, media_type=media_type)
        replay.headers["Idempotent-Replayed"] = "true"
        return replay
    response = await call_next(request)
    chunks = [chunk async for chunk in response.body_iterator]  # type: ignore[attr-defined]
    body = b"".join(c if isinstance(c, bytes) else str(c).encode() for c in chunks)
    keep = _keepable(response.status_code) and len(body) <= _MAX_STORED_BYTES
    try:
        async with pool.connection(timeout=5.0) as conn:
            if keep:
                await conn.execute(
                    "UPDATE idempotency_keys SET state = 'done', status = %s, media_type = %s,"
                    " body = %s WHERE owner = %s AND key = %s",
                    (
                        response.status_code,
                        response.headers.get("content-type"),
                        body,
                        owner,
                        key,
                    ),
                )
            else:
                await conn.execute(
                    "DELETE FROM idempotency_keys WHERE owner = %s AND key = %s", (owner, key)
                )
    except (psycopg.Error, PoolTimeout) as exc:
        log.error("could not store the answer of an idempotent request: %s", type(exc).__name__)
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(content=body, status_code=response.status_code, headers=headers)
