"""Who is calling: roles, principals and the ``require`` dependency (placeholder).

This is the interface HTTP routers code against. The placeholder keeps API keys in process
memory (``register_api_key``), enough for the gateway's own tests; the real implementation
stores principals and hashed keys in the database.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import GatewayError

__all__ = [
    "AuthenticationError",
    "PermissionDeniedError",
    "Principal",
    "Role",
    "register_api_key",
    "require",
]


class Role(StrEnum):
    VENDOR = "vendor"
    TECHNICIAN = "technician"
    OPERATOR = "operator"
    ADMIN = "admin"


_STAFF_RANK = {Role.TECHNICIAN: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


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
        return _STAFF_RANK[self.role] >= _STAFF_RANK[role]


class AuthenticationError(GatewayError):
    """No credentials, or credentials that match no principal."""

    http_status: ClassVar[int] = 401


class PermissionDeniedError(GatewayError):
    """The principal's role does not allow this."""

    http_status: ClassVar[int] = 403


_KEYS: dict[str, Principal] = {}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def register_api_key(key: str, principal: Principal) -> None:
    """Make ``key`` authenticate as ``principal`` in this process (placeholder key store)."""
    _KEYS[_digest(key)] = principal


_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")


def require(role: Role) -> Any:
    """FastAPI dependency: the calling principal, who must have ``role``."""

    async def dependency(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise AuthenticationError("an API key is required (Authorization: Bearer <key>)")
        digest = _digest(credentials.credentials)
        principal = next((p for d, p in _KEYS.items() if hmac.compare_digest(d, digest)), None)
        if principal is None:
            raise AuthenticationError("unknown API key")
        if not principal.has(role):
            raise PermissionDeniedError(f"this needs the {role.value} role")
        return principal

    return dependency
