"""Who may act: roles, principals, and the secrets that prove them (pure, no I/O).

Roles nest for staff: ``admin`` ⊇ ``operator`` ⊇ ``technician``. ``vendor`` stands apart: a
vendor may use the vending API and nothing else, and no staff role grants vending.

API keys and session tokens are 256-bit random values, shown once and stored only as their
SHA-256: a fast hash is right for secrets that cannot be guessed (passwords, which can, go
through argon2id in :mod:`gateway.auth.passwords`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

__all__ = [
    "API_KEY_PREFIX",
    "NAME_PATTERN",
    "Principal",
    "PrincipalKind",
    "Role",
    "csrf_token_for",
    "hash_secret",
    "key_hint",
    "looks_like_api_key",
    "new_api_key",
    "new_session_token",
]

API_KEY_PREFIX: Final = "mgw_"
"""Marks a gateway API key, so that secret scanners and people recognise one."""
_SECRET_BYTES: Final = 32
_API_KEY = re.compile(r"^mgw_[A-Za-z0-9_-]{43}$")
NAME_PATTERN: Final = r"^[A-Za-z0-9_.@-]{1,64}$"

PrincipalKind = Literal["person", "machine"]


class Role(StrEnum):
    VENDOR = "vendor"
    TECHNICIAN = "technician"
    OPERATOR = "operator"
    ADMIN = "admin"


_STAFF_RANK: Final = {Role.TECHNICIAN: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated person or machine client."""

    id: int
    name: str
    role: Role
    kind: PrincipalKind

    def has(self, role: Role) -> bool:
        """Whether this principal may act as ``role`` (staff roles nest; vendor is apart)."""
        if role is Role.VENDOR or self.role is Role.VENDOR:
            return self.role is role
        return _STAFF_RANK[self.role] >= _STAFF_RANK[role]


def _random_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()


def new_api_key() -> str:
    """A fresh API key: ``mgw_`` and 256 random bits in URL-safe base64 (47 characters)."""
    return API_KEY_PREFIX + _random_text()


def new_session_token() -> str:
    return _random_text()


def looks_like_api_key(text: str) -> bool:
    return _API_KEY.fullmatch(text) is not None


def hash_secret(secret: str) -> bytes:
    """SHA-256 of an API key or session token: what the database keeps."""
    return hashlib.sha256(secret.encode()).digest()


def key_hint(api_key: str) -> str:
    """A short, non-secret label to recognise a key in listings (its first 6 random chars)."""
    return api_key[: len(API_KEY_PREFIX) + 6] + "…"


def csrf_token_for(session_token: str) -> str:
    """The CSRF token bound to a session: derived from its secret, so nothing more is stored.

    A page embeds it in forms (or sends it as ``X-CSRF-Token``); a cross-site request carries
    the cookie but cannot read the token.
    """
    digest = hmac.new(session_token.encode(), b"csrf-token", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
