"""Simulated time for the fleet.

The meter models never read the wall clock: they are stepped with an explicit ``now``. The
async shell asks a :class:`SimClock` for that ``now``:

* :class:`WallClock` maps wall time onto simulated time, ``start + elapsed × speed``. When the
  simulation starts in the past (the usual way to produce history quickly) it can be capped at
  the wall clock, so a meter never reports a reading from the future: it runs fast until it has
  caught up, then in real time.
* :class:`ManualClock` is moved by hand, so tests step meters deterministically without waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from protocols.errors import UsageError

__all__ = ["ManualClock", "SimClock", "WallClock", "floor_time"]


class SimClock(Protocol):
    """Source of simulated time."""

    def now(self) -> datetime:
        """Current simulated time (aware, UTC)."""
        ...

    def wall_delay(self, until: datetime) -> float:
        """Wall seconds to wait until simulated time reaches ``until`` (0 if already past)."""
        ...


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise UsageError("simulated time must be timezone-aware")
    return moment.astimezone(UTC)


@dataclass(slots=True)
class WallClock:
    """Simulated time driven by the wall clock at ``speed`` × real time."""

    start: datetime
    speed: float = 1.0
    cap_at_wall: bool = False
    _t0: float = field(default_factory=time.monotonic)
    _wall0: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise UsageError("clock speed must be positive")
        self.start = _aware(self.start)

    def now(self) -> datetime:
        elapsed = time.monotonic() - self._t0
        sim = self.start + timedelta(seconds=elapsed * self.speed)
        if self.cap_at_wall:
            wall = self._wall0 + timedelta(seconds=elapsed)
            return min(sim, wall)
        return sim

    def caught_up_at(self) -> datetime:
        """When a clock capped at the wall has caught up with it and runs in real time from
        then on (simulated and wall time agree from this moment)."""
        if not self.cap_at_wall:
            raise UsageError("only a clock capped at the wall catches up with it")
        behind = (self._wall0 - self.start).total_seconds()
        if behind <= 0:
            return self._wall0
        if self.speed <= 1:
            raise UsageError("a clock that starts in the past needs speed > 1 to catch up")
        return self._wall0 + timedelta(seconds=behind / (self.speed - 1))

    def wall_delay(self, until: datetime) -> float:
        ahead = (until - self.now()).total_seconds()
        if ahead <= 0:
            return 0.0
        if self.cap_at_wall and self.now() >= self._wall0 + timedelta(
            seconds=time.monotonic() - self._t0
        ):
            return ahead  # caught up: real time from here on
        return ahead / self.speed


@dataclass(slots=True)
class ManualClock:
    """Simulated time that only moves when told to (tests)."""

    current: datetime

    def __post_init__(self) -> None:
        self.current = _aware(self.current)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current

    def set(self, moment: datetime) -> None:
        self.current = _aware(moment)

    def wall_delay(self, until: datetime) -> float:
        return 0.0


def floor_time(moment: datetime, step_s: int) -> datetime:
    """The latest multiple of ``step_s`` seconds since the epoch at or before ``moment``."""
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % step_s, UTC)
