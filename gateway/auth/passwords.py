"""Password hashing with argon2id (argon2-cffi), run off the event loop.

Hashing is deliberately slow and memory-hard, so both calls run in a worker thread. Verifying
against a dummy hash when the account does not exist keeps the response time from telling
whether a name is known.
"""

from __future__ import annotations

import asyncio
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["MIN_PASSWORD_LENGTH", "check_password_policy", "hash_password", "verify_password"]

MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 1024
_HASHER: Final = PasswordHasher()  # argon2id, RFC 9106 low-memory profile defaults
_DUMMY_HASH: Final = _HASHER.hash("not a real password, only for constant-time misses")


def check_password_policy(password: str) -> str | None:
    """Why ``password`` is unacceptable, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"a password has at most {MAX_PASSWORD_LENGTH} characters"
    return None


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    encodable = True
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no stored password can match it
        encodable = False
        password = password.encode("utf-8", "replace").decode("utf-8")  # same work, then False
    try:
        matched = _HASHER.verify(stored or _DUMMY_HASH, password)
        return matched and encodable and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (None: unknown account, always False)."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    return await asyncio.to_thread(_verify, stored, password)
