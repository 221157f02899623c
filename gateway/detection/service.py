"""The detection loop: drains the work queue and re-evaluates each affected meter's window.

One round, in one transaction: take the cluster-wide detection lock (so one gateway process
drains at a time, whichever received the data), take a batch of queue entries, and for each
meter read its stored data from before the changed range (the rules' lookback, widened to cover
the alerts that reach into it), run the pure rules, reconcile their episodes with the stored
alerts and write the transitions, outbox rows and audit records. A crash before the commit
leaves the queue entries in place; reconciliation makes the replay harmless.

Every ``sweep_s`` the round also queues meters that were reporting live and have gone silent
in receive time, so that a comms-loss alert opens at once rather than when data comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.detection.model import Rules
from gateway.detection.reconcile import reconcile
from gateway.detection.rules import evaluate
from gateway.detection.store import (
    Window,
    apply_plan,
    drain_queue,
    enqueue_silent_meters,
    load_alerts,
    load_data,
    load_profile,
    load_resolutions,
    window_bounds,
)

__all__ = ["DetectionOptions", "Detector", "evaluate_window"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DetectionOptions:
    rules: Rules = field(default_factory=Rules)
    poll_s: float = 1.0
    """Pause after a round that found nothing to do."""
    batch: int = 5000
    """Queue entries taken per round."""
    sweep_s: float = 60.0
    """How often live meters are checked for silence in receive time."""


@dataclass(frozen=True, slots=True)
class RoundResult:
    meters: int
    opened: int
    changed: int
    withdrawn: int
    locked_out: bool = False


async def evaluate_window(
    conn: AsyncConnection[Any], window: Window, rules: Rules, now: datetime
) -> tuple[int, int, int]:
    """Re-evaluate one meter from ``window.lo`` on; (opened, changed, withdrawn)."""
    profile = await load_profile(conn, window.meter_id)
    if profile is None:
        return (0, 0, 0)
    stored = await load_alerts(conn, window.meter_id, window.lo)
    judged, _ = window_bounds(window.lo, stored, rules)
    if judged < window.lo:
        stored = await load_alerts(conn, window.meter_id, judged)
    _, read_from = window_bounds(judged, stored, rules)
    data = await load_data(conn, window.meter_id, read_from)
    resolutions = await load_resolutions(conn, window.meter_id, read_from)
    episodes = evaluate(profile, data, rules, now=now, resolutions=resolutions)
    plan = reconcile(stored, episodes, since=judged)
    if plan.empty:
        return (0, 0, 0)
    opened = await apply_plan(conn, window.meter_id, plan)
    for episode in plan.opens:
        log.info(
            "alert opened: %s on meter %s from %s",
            episode.kind.value,
            window.meter_id,
            episode.start.isoformat(),
            extra={"meter_id": window.meter_id, "kind": episode.kind.value},
        )
    return (len(opened), len(plan.updates), len(plan.withdrawals))


class Detector:
    """Runs detection rounds against ``pool`` until stopped."""

    def __init__(self, pool: AsyncConnectionPool, options: DetectionOptions) -> None:
        self.pool = pool
        self.options = options
        self._last_sweep = float("-inf")
        self.rounds = 0

    async def run_round(self) -> RoundResult:
        opened = changed = withdrawn = 0
        async with self.pool.connection(timeout=10.0) as conn, conn.transaction():
            windows = await drain_queue(conn, self.options.batch)
            if windows is None:
                return RoundResult(0, 0, 0, 0, locked_out=True)
            if time.monotonic() - self._last_sweep >= self.options.sweep_s:
                self._last_sweep = time.monotonic()
                if await enqueue_silent_meters(conn, self.options.rules):
                    windows = _merge(windows, await drain_queue(conn, self.options.batch) or [])
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
            assert row is not None
            now: datetime = row[0]
            for window in windows:
                o, c, w = await evaluate_window(conn, window, self.options.rules, now)
                opened, changed, withdrawn = opened + o, changed + c, withdrawn + w
        self.rounds += 1
        return RoundResult(len(windows), opened, changed, withdrawn)

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until ``stop``; a database outage is waited out with backoff."""
        backoff = self.options.poll_s
        while not stop.is_set():
            try:
                result = await self.run_round()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("detection round failed, retrying in %.0f s: %s", backoff, exc)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            backoff = self.options.poll_s
            if result.meters == 0:
                await _wait(stop, self.options.poll_s)


def _merge(first: list[Window], more: list[Window]) -> list[Window]:
    merged = {w.meter_id: w for w in first}
    for w in more:
        known = merged.get(w.meter_id)
        merged[w.meter_id] = (
            w if known is None else Window(w.meter_id, min(w.lo, known.lo), max(w.hi, known.hi))
        )
    return sorted(merged.values(), key=lambda w: w.meter_id)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
