"""People's way in: password login to a session cookie, logout, and "who am I".

``POST /auth/login`` takes a form (``name``, ``password``) or the same as JSON. It answers with
the session's CSRF token and sets the ``gw_session`` cookie (HttpOnly, SameSite=Strict, Secure
under TLS; the session ends after ``GATEWAY_SESSION_IDLE_S`` without use or
``GATEWAY_SESSION_MAX_S`` after login). Repeated failures slow the answers down and then lock
the account for ``GATEWAY_LOGIN_LOCKOUT_S``; a failure never says whether the name exists or the
account is locked. One source address gets a limited number of attempts a minute (429), so
trying one password on many accounts is slow too. Every attempt goes to the audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from pydantic import ValidationError as SchemaError

from gateway import audit
from gateway.auth import store
from gateway.auth.authenticators import SESSION_COOKIE
from gateway.auth.model import Principal, Role, csrf_token_for
from gateway.auth.passwords import MAX_PASSWORD_LENGTH, verify_password
from gateway.auth.ratelimit import RateLimit
from gateway.errors import AuthError, RateLimitedError, ValidationError
from gateway.http.models import ApiModel
from gateway.http.security import AccessControl, request_id_of, require, source_of

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/auth", tags=["authentication"])


class LoginIn(ApiModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class LoginOut(BaseModel):
    principal: str
    role: Role
    csrf_token: str
    """Send it as ``X-CSRF-Token`` (or the form field ``csrf_token``) with every unsafe request."""
    idle_timeout_s: int
    expires_in_s: int


class WhoAmI(BaseModel):
    principal: str
    role: Role
    kind: str
    csrf_token: str | None = None


async def _login_body(request: Request) -> LoginIn:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            return LoginIn.model_validate(json.loads(await request.body()))
        form = await request.form()
        return LoginIn.model_validate({k: v for k, v in form.items() if isinstance(v, str)})
    except (SchemaError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValidationError("login needs a name and a password") from exc


_RECORD_WAIT_S = 5.0
"""How long recording a login attempt may wait for a database connection."""
_LOGIN_FAILED = "login failed: wrong name or password, or the account is temporarily locked"


@router.post(
    "/login",
    response_model=LoginOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                ct: {"schema": LoginIn.model_json_schema()}
                for ct in ("application/json", "application/x-www-form-urlencoded")
            },
        },
    },
)
async def login(request: Request, response: Response) -> LoginOut:
    """Log a person in with name and password; sets the session cookie."""
    request.state.audited = True
    access: AccessControl = request.app.state.access
    policy = access.policy
    per_source = RateLimit(policy.attempts_per_source_per_min, burst=10)
    wait = access.limiter.take(("login", source_of(request)), per_source)
    if wait > 0:
        raise RateLimitedError("too many login attempts from this address", retry_after_s=wait)
    body = await _login_body(request)
    async with access.pool.connection(timeout=access.db_wait_s) as conn:
        stored = await store.password_hash_of(conn, body.name)
    ok = await verify_password(stored, body.password)
    # The attempt is to be recorded (failures count towards the lockout): this connection may
    # wait longer than a request that has done nothing yet. Past that, a 503 records nothing.
    async with access.pool.connection(timeout=max(access.db_wait_s, _RECORD_WAIT_S)) as conn:
        outcome = await store.record_login(conn, body.name, password_ok=ok, policy=policy)
        token = None
        if outcome.result == "ok" and outcome.principal is not None:
            token = await store.create_session(
                conn, outcome.principal, policy=policy, source=source_of(request)
            )
        await audit.record(
            conn,
            actor=body.name,
            action="login",
            object=f"principal/{body.name}",
            outcome=outcome.result,
            source=source_of(request),
            request_id=request_id_of(request),
            detail={"failures": outcome.failures} if outcome.result != "ok" else None,
        )
    if token is None or outcome.principal is None:
        if outcome.result == "locked" and outcome.failures >= policy.max_failures:
            log.warning("account %s locked after %d failed logins", body.name, outcome.failures)
        await asyncio.sleep(policy.delay_s(outcome.failures))
        raise AuthError(_LOGIN_FAILED)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(policy.session_absolute.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=access.secure_cookies,
        path="/",
    )
    response.headers["Cache-Control"] = "no-store"
    return LoginOut(
        principal=outcome.principal.name,
        role=outcome.principal.role,
        csrf_token=csrf_token_for(token),
        idle_timeout_s=int(policy.session_idle.total_seconds()),
        expires_in_s=int(policy.session_absolute.total_seconds()),
    )


@router.post("/logout", status_code=204)
async def logout(
    request: Request,
    principal: Annotated[Principal, Depends(require(Role.TECHNICIAN))],
) -> Response:
    """End the current session (people; the CSRF token is required like any unsafe request)."""
    del principal
    access: AccessControl = request.app.state.access
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        async with access.pool.connection(timeout=access.db_wait_s) as conn:
            await store.delete_session(conn, token)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _whoami(request: Request, principal: Principal) -> dict[str, Any]:
    token = request.cookies.get(SESSION_COOKIE)
    csrf = csrf_token_for(token) if token and principal.kind == "person" else None
    return {
        "principal": principal.name,
        "role": principal.role,
        "kind": principal.kind,
        "csrf_token": csrf,
    }


@router.get("/whoami", response_model=WhoAmI)
async def whoami_staff(
    request: Request,
    principal: Annotated[Principal, Depends(require(Role.TECHNICIAN))],
) -> dict[str, Any]:
    """The calling staff member or staff client (and, for a session, its CSRF token)."""
    return _whoami(request, principal)
