"""Access control for the HTTP API: roles, principals and the ``require`` dependency.

Placeholder until the access-control feature lands. Keys are looked up by their SHA-256 in
the ``api_keys`` table when it exists; without it every protected route answers 401 (closed).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["Principal", "Role", "require"]


class Role(enum.StrEnum):
    VENDOR = "vendor"
    TECHNICIAN = "technician"
    OPERATOR = "operator"
    ADMIN = "admin"


_STAFF = (Role.TECHNICIAN, Role.OPERATOR, Role.ADMIN)


@dataclass(frozen=True, slots=True)
class Principal:
    id: int
    name: str
    role: Role
    kind: Literal["person", "machine"]

    def has(self, role: Role) -> bool:
        """Staff roles nest (admin ⊇ operator ⊇ technician); vendor stands alone."""
        if role is Role.VENDOR or self.role is Role.VENDOR:
            return self.role is role
        return _STAFF.index(self.role) >= _STAFF.index(role)


_bearer = HTTPBearer(auto_error=False)


def require(role: Role) -> Any:
    """A dependency returning the caller's principal: 401 without valid key, 403 wrong role."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None:
            raise HTTPException(401, "credentials required", {"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(credentials.credentials.encode()).hexdigest()
        pool = request.app.state.services.pool
        try:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT to_regclass('api_keys') IS NOT NULL")
                row = await cur.fetchone()
                found = None
                if row and row[0]:
                    cur = await conn.execute(
                        "SELECT id, name, role, kind FROM api_keys WHERE key_sha256 = %s",
                        (digest,),
                    )
                    found = await cur.fetchone()
        except psycopg.Error as exc:
            raise HTTPException(503, "credentials cannot be checked now") from exc
        if found is None:
            raise HTTPException(401, "invalid credentials", {"WWW-Authenticate": "Bearer"})
        principal = Principal(found[0], found[1], Role(found[2]), found[3])
        if not principal.has(role):
            raise HTTPException(403, f"requires the {role.value} role")
        return principal

    return dependency
