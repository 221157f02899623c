"""Access control for HTTP routes: roles, the authenticated principal, and ``require``.

Staff roles nest (ADMIN ⊇ OPERATOR ⊇ TECHNICIAN); VENDOR stands apart and reaches only the
vending API. ``require(role)`` is a FastAPI dependency factory: it authenticates the request's
``Authorization: Bearer <api key>`` and answers 401 without valid credentials, 403 for a
principal lacking the role.

This module holds the interface only, with an in-process key table: principals and their API
keys are registered with :func:`register_api_key`. The persistent principal and key store
replaces the table without changing the interface.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["Principal", "Role", "register_api_key", "require"]


class Role(StrEnum):
    VENDOR = "vendor"
    TECHNICIAN = "technician"
    OPERATOR = "operator"
    ADMIN = "admin"


_STAFF_RANK: Final = {Role.TECHNICIAN: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


@dataclass(frozen=True, slots=True)
class Principal:
    id: int
    name: str
    role: Role
    kind: Literal["person", "machine"]

    def has(self, role: Role) -> bool:
        """True when this principal holds ``role`` (staff roles nest; vendor is separate)."""
        if role is Role.VENDOR or self.role is Role.VENDOR:
            return self.role is role
        return _STAFF_RANK[self.role] >= _STAFF_RANK[role]


_KEYS: dict[str, Principal] = {}
_bearer = HTTPBearer(auto_error=False)


def _digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def register_api_key(api_key: str, principal: Principal) -> None:
    """Make ``api_key`` authenticate as ``principal`` (kept as a digest, never in clear)."""
    _KEYS[_digest(api_key)] = principal


def require(role: Role) -> Any:
    """A dependency returning the authenticated :class:`Principal` holding ``role``."""

    async def _require(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None:
            raise HTTPException(401, "credentials required", {"WWW-Authenticate": "Bearer"})
        principal = _KEYS.get(_digest(credentials.credentials))
        if principal is None:
            raise HTTPException(401, "invalid credentials", {"WWW-Authenticate": "Bearer"})
        if not principal.has(role):
            raise HTTPException(403, f"the {role.value} role is required")
        return principal

    return _require
