"""Authentication and authorisation: principals, roles, API keys, passwords, sessions, limits.

The HTTP face of this package is :mod:`gateway.http.security`; the ``gateway principals`` and
``gateway keys`` commands and the admin API manage what is stored here.
"""

from gateway.auth.authenticators import (
    ApiKeyAuthenticator,
    Authenticator,
    Credentials,
    SessionAuthenticator,
)
from gateway.auth.model import Principal, PrincipalKind, Role
from gateway.auth.ratelimit import RateLimit, RateLimiter
from gateway.auth.store import LoginPolicy

__all__ = [
    "ApiKeyAuthenticator",
    "Authenticator",
    "Credentials",
    "LoginPolicy",
    "Principal",
    "PrincipalKind",
    "RateLimit",
    "RateLimiter",
    "Role",
    "SessionAuthenticator",
]
