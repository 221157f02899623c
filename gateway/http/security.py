"""Access control for every HTTP surface: who is calling, may they, and how often.

``require(role)`` is the one FastAPI dependency that guards an endpoint or a router::

    principal: Annotated[Principal, Depends(require(Role.TECHNICIAN))]
    APIRouter(dependencies=[Depends(require(Role.OPERATOR))])

It authenticates through the configured :class:`~gateway.auth.Authenticator` chain (API key,
then session cookie), answers 401 without valid credentials and 403 for a role that does not
reach ``role`` (staff roles nest: admin ⊇ operator ⊇ technician; vendor stands apart), applies
the principal's rate limit (429 with ``Retry-After``), and declares both security schemes in the
OpenAPI document. The errors are domain errors; the app's one handler turns them into HTTP.

:func:`install_audit` adds the middleware that gives every request an id and appends every
state-changing request (any method but GET/HEAD/OPTIONS) to the audit log with its outcome.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Final

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import audit
from gateway.auth.authenticators import (
    CSRF_FIELD,
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    ApiKeyAuthenticator,
    Authenticator,
    Credentials,
    SessionAuthenticator,
)
from gateway.auth.model import Principal, Role
from gateway.auth.ratelimit import RateLimit, RateLimiter
from gateway.auth.store import LoginPolicy
from gateway.errors import (
    AuthError,
    ForbiddenError,
    RateLimitedError,
    ServiceUnavailableError,
)
from gateway.modbus.allowlist import DEFAULT_ALLOW_LIST, HostAllowList
from gateway.settings import Settings

__all__ = [
    "AccessControl",
    "AuditMiddleware",
    "Principal",
    "Role",
    "access_from_settings",
    "install_audit",
    "optional_principal",
    "request_id_of",
    "require",
    "source_of",
]

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_FORM_TYPES: Final = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(slots=True)
class AccessControl:
    """What the security dependencies need, built by the service and set on ``app.state``."""

    pool: AsyncConnectionPool[Any]
    limiter: RateLimiter
    policy: LoginPolicy = field(default_factory=LoginPolicy)
    authenticators: Sequence[Authenticator] = ()
    secure_cookies: bool = False
    """Mark the session cookie ``Secure`` (the gateway serves TLS or sits behind a TLS proxy)."""
    metrics_open: bool = True
    """Serve ``/metrics`` without credentials (Prometheus scrapers inside the network)."""
    modbus_allowed: HostAllowList = DEFAULT_ALLOW_LIST
    """Networks a Modbus meter may be registered in (the poller checks again)."""
    db_wait_s: float = 1.0
    """How long checking credentials waits for a database connection before a 503."""

    def __post_init__(self) -> None:
        if not self.authenticators:
            self.authenticators = (ApiKeyAuthenticator(), SessionAuthenticator(self.policy))

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        try:
            async with self.pool.connection(timeout=self.db_wait_s) as conn:
                # Each authenticator's lookup is a single statement: in autocommit it needs no
                # BEGIN and COMMIT, two round trips that would double the cost of a check.
                await conn.set_autocommit(True)
                try:
                    for authenticator in self.authenticators:
                        principal = await authenticator.authenticate(credentials, conn)
                        if principal is not None:
                            return principal
                finally:
                    if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                        await conn.set_autocommit(False)
        except (psycopg.Error, PoolTimeout) as exc:
            raise ServiceUnavailableError(
                f"cannot check credentials now: {type(exc).__name__}", retry_after_s=2.0
            ) from exc
        return None


def access_from_settings(settings: Settings, pool: AsyncConnectionPool[Any]) -> AccessControl:
    """Access control as configured: login policy, per-role rate limits, cookies, metrics."""
    staff = RateLimit(settings.rate_limit_staff_per_min, settings.rate_limit_burst)
    vendor = RateLimit(settings.rate_limit_vendor_per_min, settings.rate_limit_burst)
    return AccessControl(
        pool=pool,
        db_wait_s=settings.http_db_wait_ms / 1000,
        limiter=RateLimiter(
            {Role.VENDOR: vendor, Role.TECHNICIAN: staff, Role.OPERATOR: staff, Role.ADMIN: staff}
        ),
        policy=LoginPolicy(
            max_failures=settings.login_max_failures,
            lockout=timedelta(seconds=settings.login_lockout_s),
            session_idle=timedelta(seconds=settings.session_idle_s),
            session_absolute=timedelta(seconds=settings.session_max_s),
        ),
        secure_cookies=settings.tls or settings.behind_tls_proxy,
        metrics_open=settings.metrics_open,
        modbus_allowed=HostAllowList(settings.modbus_networks),
    )


def _access(request: Request) -> AccessControl:
    access: AccessControl = request.app.state.access
    return access


def request_id_of(request: Request) -> str:
    rid: str | None = getattr(request.state, "request_id", None)
    return rid or "-"


def source_of(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


async def _credentials(request: Request) -> Credentials:
    csrf = request.headers.get(CSRF_HEADER)
    if csrf is None and request.method not in SAFE_METHODS:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(_FORM_TYPES):
            form = await request.form()  # cached by Starlette; the endpoint reads it again
            value = form.get(CSRF_FIELD)
            csrf = value if isinstance(value, str) else None
    return Credentials(
        method=request.method,
        authorization=request.headers.get("authorization"),
        session_cookie=request.cookies.get(SESSION_COOKIE),
        csrf_token=csrf,
    )


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="Machine clients: `Authorization: Bearer <API key>` (from `gateway principals`).",
)
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description="People: the session cookie set by `POST /auth/login`; unsafe methods also "
    "need the session's CSRF token in `X-CSRF-Token` or the form field `csrf_token`.",
)


async def _principal(request: Request) -> Principal | None:
    """Authenticate once per request (several guards may ask), and rate-limit once."""
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    access = _access(request)
    try:
        principal = await access.authenticate(await _credentials(request))
    except ForbiddenError:
        request.state.principal = None
        raise
    request.state.principal = principal
    if principal is not None:
        wait = access.limiter.check(principal)
        if wait > 0:
            raise RateLimitedError(
                f"rate limit of {principal.role} clients reached", retry_after_s=wait
            )
    return principal


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the calling principal, who must hold ``role`` (401/403/429)."""

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        cookie: Annotated[str | None, Depends(_cookie)],
    ) -> Principal:
        del bearer, cookie  # declared for the OpenAPI document; read from the request below
        principal = await _principal(request)
        if principal is None:
            raise AuthError("authentication required")
        if not principal.has(role):
            raise ForbiddenError(f"this needs the {role} role")
        return principal

    dependency.__name__ = f"require_{role.value}"
    return dependency


async def optional_principal(request: Request) -> Principal | None:
    """The caller if credentials were presented, else None (for endpoints open by setting)."""
    return await _principal(request)


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return {401: "unauthenticated", 403: "forbidden", 429: "rate_limited"}.get(
        status, f"failed:{status}"
    )


class AuditMiddleware:
    """Request ids for every request; an audit record for every state-changing one.

    A plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` runs the application in a task
    of its own and copies the response through a stream: a large part of a small request's
    cost). The record is written when the response starts, before the client sees it, unless
    the handler wrote a more specific one itself (``request.state.audited``).
    """

    def __init__(self, app: ASGIApp, access: AccessControl) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.state.request_id = request_id
        unsafe = request.method not in SAFE_METHODS

        async def send_with_audit(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
                status = int(message["status"])
                # A 503 took no effect (no capacity, or the database away): its record would
                # only queue for the resource that is short.
                if unsafe and status != 503 and not getattr(request.state, "audited", False):
                    await self._record(request, request_id, status)
            await send(message)

        await self.app(scope, receive, send_with_audit)

    async def _record(self, request: Request, request_id: str, status: int) -> None:
        principal: Principal | None = getattr(request.state, "principal", None)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "(no route)"
        try:
            async with self.access.pool.connection(timeout=5.0) as conn:
                await audit.record(
                    conn,
                    actor=principal.name if principal is not None else None,
                    action=f"{request.method} {template}",
                    object=request.url.path,
                    outcome=_outcome(status),
                    source=source_of(request),
                    request_id=request_id,
                    detail={"status": status},
                )
        except (psycopg.Error, PoolTimeout) as exc:
            # The request already took effect; losing its record must be loud, not silent.
            log.error(
                "could not write the audit record of %s %s: %s",
                request.method,
                request.url.path,
                type(exc).__name__,
                extra={"request_id": request_id},
            )


def install_audit(app: FastAPI, access: AccessControl) -> None:
    """Request ids for every request; an audit record for every state-changing one."""
    app.add_middleware(AuditMiddleware, access=access)
