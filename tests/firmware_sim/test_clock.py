"""The wall-driven simulated clock: running fast through the past, then in real time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from firmware_sim.clock import WallClock
from protocols.errors import UsageError

WALL0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def clock_after(elapsed_s: float, *, start: datetime, speed: float) -> WallClock:
    """A clock capped at the wall whose wall time began ``elapsed_s`` seconds ago at WALL0."""
    return WallClock(start, speed, cap_at_wall=True, _t0=time.monotonic() - elapsed_s, _wall0=WALL0)


def test_a_clock_100_s_behind_at_11x_catches_up_after_10_s() -> None:
    start = WALL0 - timedelta(seconds=100)
    # 100 s behind, gaining 10 s per wall second: level with the wall 10 s after the start.
    assert clock_after(0, start=start, speed=11).caught_up_at() == WALL0 + timedelta(seconds=10)
    fast = clock_after(5, start=start, speed=11).now()
    assert abs((fast - (start + timedelta(seconds=55))).total_seconds()) < 0.5
    live = clock_after(30, start=start, speed=11).now()
    assert abs((live - (WALL0 + timedelta(seconds=30))).total_seconds()) < 0.5


def test_a_clock_starting_now_or_later_is_caught_up_at_once() -> None:
    assert clock_after(0, start=WALL0, speed=5).caught_up_at() == WALL0
    assert clock_after(0, start=WALL0 + timedelta(hours=1), speed=5).caught_up_at() == WALL0


def test_only_a_capped_clock_fast_enough_catches_up() -> None:
    with pytest.raises(UsageError):
        WallClock(WALL0 - timedelta(hours=1), 10.0).caught_up_at()
    with pytest.raises(UsageError):
        clock_after(0, start=WALL0 - timedelta(hours=1), speed=1).caught_up_at()
