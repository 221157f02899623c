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
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.detection.model import Rules
from gateway.detection.store import (
    Window,
    apply_plan,
    drain_queue,
    enqueue_silent_meters,
    load_alerts,
    load_data,
    load_profiles,
    window_bounds,
)
from gateway.detection.worker import Job, judge, lower_priority

__all__ = ["DetectionOptions", "Detector", "evaluate_windows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DetectionOptions:
    rules: Rules = field(default_factory=Rules)
    poll_s: float = 1.0
    """Pause after a round that found nothing to do, and the shortest period between rounds."""
    batch: int = 5000
    """Queue entries taken per round."""
    sweep_s: float = 60.0
    """How often live meters are checked for silence in receive time."""
    worker: bool = False
    """Judge meters in a worker process at lower CPU priority instead of on the event loop."""


@dataclass(frozen=True, slots=True)
class RoundResult:
    meters: int
    opened: int
    changed: int
    withdrawn: int
    locked_out: bool = False


async def evaluate_windows(
    conn: AsyncConnection[Any],
    windows: Sequence[Window],
    rules: Rules,
    now: datetime,
    executor: Executor | None = None,
) -> tuple[int, int, int]:
    """Re-evaluate each window's meter from its ``lo`` on; (opened, changed, withdrawn).

    Loads what every meter needs in a handful of set-based queries, runs the pure rules per
    meter (in ``executor`` when given), and writes only the meters whose alerts change."""
    profiles = await load_profiles(conn, [w.meter_id for w in windows])
    windows = [w for w in windows if w.meter_id in profiles]
    lows = {w.meter_id: w.lo for w in windows}
    stored = await load_alerts(conn, lows)
    judged = {m: window_bounds(lo, stored[m], rules)[0] for m, lo in lows.items()}
    wider = {m: at for m, at in judged.items() if at < lows[m]}
    if wider:
        stored |= await load_alerts(conn, wider)
    read_from = {m: window_bounds(at, stored[m], rules)[1] for m, at in judged.items()}
    loaded = await load_data(conn, read_from)
    jobs = [Job(profiles[m], raw, stored[m], judged[m]) for m, raw in loaded.items()]
    if executor is None:
        plans = judge(jobs, rules, now)
    else:
        plans = await asyncio.get_running_loop().run_in_executor(executor, judge, jobs, rules, now)
    opened = changed = withdrawn = 0
    for meter_id, plan in plans:
        ids = await apply_plan(conn, meter_id, plan)
        for episode in plan.opens:
            log.info(
                "alert opened: %s on meter %s from %s",
                episode.kind.value,
                meter_id,
                episode.start.isoformat(),
                extra={"meter_id": meter_id, "kind": episode.kind.value},
            )
        opened, changed, withdrawn = (
            opened + len(ids),
            changed + len(plan.updates),
            withdrawn + len(plan.withdrawals),
        )
    return opened, changed, withdrawn


class Detector:
    """Runs detection rounds against ``pool`` until stopped."""

    def __init__(self, pool: AsyncConnectionPool, options: DetectionOptions) -> None:
        self.pool = pool
        self.options = options
        self._last_sweep = float("-inf")
        self.rounds = 0
        self._executor: ProcessPoolExecutor | None = None

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
            if self.options.worker and self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=lower_priority,
                )
            opened, changed, withdrawn = await evaluate_windows(
                conn, windows, self.options.rules, now, self._executor
            )
        self.rounds += 1
        return RoundResult(len(windows), opened, changed, withdrawn)

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until ``stop``; a database outage is waited out with backoff."""
        try:
            await self._run(stop)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = self.options.poll_s
        while not stop.is_set():
            began = time.monotonic()
            try:
                result = await self.run_round()
            except (psycopg.OperationalError, PoolTimeout, BrokenProcessPool) as exc:
                # The database is away, or the worker process died (killed, out of memory):
                # nothing was committed, the queue still holds the work; retry after a pause.
                log.warning("detection round failed, retrying in %.0f s: %s", backoff, exc)
                if isinstance(exc, BrokenProcessPool) and self._executor is not None:
                    self._executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = None
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            backoff = self.options.poll_s
            if result.meters == 0:
                await _wait(stop, self.options.poll_s)
            else:
                # At most one round per poll period: under load, changes to the same meter
                # gather into one evaluation instead of one each.
                await _wait(stop, self.options.poll_s - (time.monotonic() - began))


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
