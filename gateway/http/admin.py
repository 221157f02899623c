"""Administration API (role ``admin``): principals, their API keys, the key store, the audit log.

The same operations as ``gateway principals`` and ``gateway keys``. A new API key is returned
exactly once, in the response that created it; only its hash is stored. Each change is written
to the audit log in the transaction that makes it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field, SecretStr, model_validator

from gateway import audit
from gateway.auth import store
from gateway.auth.model import NAME_PATTERN, Principal, Role
from gateway.auth.passwords import check_password_policy, hash_password
from gateway.errors import ValidationError
from gateway.http.db import DbConn
from gateway.http.models import ApiModel, StorableText
from gateway.http.security import request_id_of, require, source_of

__all__ = ["router"]

router = APIRouter(prefix="/admin", tags=["administration"])

Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
PrincipalName = Annotated[str, Path(pattern=NAME_PATTERN)]


class PrincipalIn(ApiModel):
    name: str = Field(pattern=NAME_PATTERN)
    role: Role
    kind: Literal["person", "machine"]
    password: SecretStr | None = None
    """People only: the initial password (at least 12 characters)."""
    key_label: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _password_for_people(self) -> PrincipalIn:
        if (self.kind == "person") != (self.password is not None):
            raise ValueError("a person needs a password; a machine client must not have one")
        return self


class PrincipalCreated(BaseModel):
    principal: str
    role: Role
    kind: Literal["person", "machine"]
    api_key: str | None = None
    """Machine clients: the API key, shown this once."""
    key_id: int | None = None


class PrincipalOut(BaseModel):
    name: str
    role: Role
    kind: Literal["person", "machine"]
    created_at: datetime
    disabled_at: datetime | None
    locked_until: datetime | None
    active_keys: int


class KeyIn(ApiModel):
    label: str = Field("", max_length=200)


class KeyCreated(BaseModel):
    principal: str
    key_id: int
    api_key: str


class KeyOut(BaseModel):
    id: int
    hint: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str | None
    action: str
    object: str
    outcome: str
    source: str | None
    request_id: str | None
    detail: dict[str, Any]


def _own_audit(request: Request) -> None:
    request.state.audited = True  # these handlers write their own, more specific record


async def _audit(
    conn: Any, request: Request, admin: Principal, action: str, obj: str, **detail: Any
) -> None:
    await audit.record(
        conn,
        actor=admin.name,
        action=action,
        object=obj,
        outcome="ok",
        source=source_of(request),
        request_id=request_id_of(request),
        detail=detail,
    )


@router.get("/principals", response_model=list[PrincipalOut])
async def list_principals(admin: Admin, conn: DbConn) -> list[dict[str, Any]]:
    del admin
    return await store.list_principals(conn)


@router.post("/principals", response_model=PrincipalCreated, status_code=201)
async def create_principal(
    body: PrincipalIn, request: Request, admin: Admin, conn: DbConn
) -> PrincipalCreated:
    """Create a person (with a password) or a machine client (an API key is returned once)."""
    password_hash = None
    if body.password is not None:
        problem = check_password_policy(body.password.get_secret_value())
        if problem is not None:
            raise ValidationError(problem)
        password_hash = await hash_password(body.password.get_secret_value())
    _own_audit(request)
    async with conn.transaction():
        created = await store.create_principal(
            conn, name=body.name, role=body.role, kind=body.kind, password_hash=password_hash
        )
        key_id, api_key = None, None
        if body.kind == "machine":
            key_id, api_key = await store.add_api_key(conn, body.name, label=body.key_label)
        await _audit(
            conn, request, admin, "principal.create", f"principal/{body.name}",
            role=body.role.value, kind=body.kind, key_id=key_id,
        )  # fmt: skip
    return PrincipalCreated(
        principal=created.name, role=created.role, kind=created.kind, api_key=api_key, key_id=key_id
    )


@router.post("/principals/{name}/disable", status_code=204)
async def disable_principal(
    name: PrincipalName, request: Request, admin: Admin, conn: DbConn
) -> None:
    """Disable a principal: its API keys stop working and its sessions end."""
    _own_audit(request)
    async with conn.transaction():
        await store.disable_principal(conn, name)
        await _audit(conn, request, admin, "principal.disable", f"principal/{name}")


@router.get("/principals/{name}/keys", response_model=list[KeyOut])
async def list_keys(name: PrincipalName, admin: Admin, conn: DbConn) -> list[dict[str, Any]]:
    del admin
    return await store.list_api_keys(conn, name)


@router.post("/principals/{name}/keys", response_model=KeyCreated, status_code=201)
async def add_key(
    name: PrincipalName, body: KeyIn, request: Request, admin: Admin, conn: DbConn
) -> KeyCreated:
    """Another API key for a machine client (rotation: add, switch the client, revoke the old)."""
    _own_audit(request)
    async with conn.transaction():
        key_id, api_key = await store.add_api_key(conn, name, label=body.label)
        await _audit(conn, request, admin, "api_key.create", f"principal/{name}", key_id=key_id)
    return KeyCreated(principal=name, key_id=key_id, api_key=api_key)


@router.post("/keys/{key_id}/revoke", status_code=204)
async def revoke_key(
    key_id: Annotated[int, Path(ge=1, le=2**62)], request: Request, admin: Admin, conn: DbConn
) -> None:
    _own_audit(request)
    async with conn.transaction():
        owner = await store.revoke_api_key(conn, key_id)
        await _audit(conn, request, admin, "api_key.revoke", f"principal/{owner}", key_id=key_id)


@router.get("/audit", response_model=list[AuditOut])
async def audit_log(
    *,
    admin: Admin,
    conn: DbConn,
    actor: Annotated[StorableText | None, Query(max_length=200)] = None,
    action: Annotated[StorableText | None, Query(max_length=200)] = None,
    outcome: Annotated[StorableText | None, Query(max_length=200)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Audit records, newest first; pass the last id of a page as ``before_id`` for the next."""
    del admin
    return await audit.query(
        conn, actor=actor, action=action, outcome=outcome, since=since, until=until,
        before_id=before_id, limit=limit,
    )  # fmt: skip
