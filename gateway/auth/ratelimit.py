"""Request rate limits: token buckets per principal (by role) or per any key, such as the source
address of login attempts (pure, in memory).

Each gateway process limits on its own; with several processes behind a load balancer the
effective limit is the sum. The clock is injected so the arithmetic is testable without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

from gateway.auth.model import Principal, Role

__all__ = ["RateLimit", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_minute: float
    """Sustained requests per minute."""
    burst: int
    """Requests allowed at once after a quiet spell."""


class RateLimiter:
    """Token buckets keyed by principal id; ``check`` says how long to wait (0: go ahead)."""

    MAX_BUCKETS = 100_000

    def __init__(
        self,
        limits: Mapping[Role, RateLimit],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = dict(limits)
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)

    def check(self, principal: Principal) -> float:
        """Take one token for ``principal``; 0.0 if allowed, else seconds until one is free."""
        limit = self._limits.get(principal.role)
        if limit is None:
            return 0.0
        return self.take(("principal", principal.id), limit)

    def take(self, key: Hashable, limit: RateLimit) -> float:
        """Take one token from ``key``'s bucket under ``limit`` (0.0: go ahead)."""
        if limit.per_minute <= 0:
            return 0.0
        rate = limit.per_minute / 60.0
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - at) * rate)
        if tokens >= 1.0:
            if len(self._buckets) >= self.MAX_BUCKETS and key not in self._buckets:
                self._buckets.clear()  # bounded memory; a reset only ever lets requests through
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate
