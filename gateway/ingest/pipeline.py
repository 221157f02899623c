"""Batching between the MQTT intake and the database, with backpressure.

Intake calls :meth:`IngestPipeline.submit` per message and awaits the returned future; the
MQTT layer sends the PUBACK only when it resolves, i.e. after commit. A single flush loop takes
everything pending when the batch is full (``max_rows``) or old enough (``max_age``), writes it
in one transaction and resolves the futures. While the database is slow or down, batches retry
with exponential backoff and pending rows pile up to ``max_pending``; then ``submit`` waits, the
un-acknowledged messages reach the broker's receive-maximum, and the broker holds the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import psycopg

from gateway.ingest.work import DeadLetter, Work
from gateway.ingest.writer import BatchResult
from gateway.metrics import Metrics

__all__ = ["IngestPipeline", "PipelineLimits"]

log = logging.getLogger(__name__)

BatchWriter = Callable[[Sequence[Work]], Awaitable[BatchResult]]


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    max_rows: int = 20_000
    max_age_s: float = 0.1
    max_pending: int = 400_000
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0


class IngestPipeline:
    def __init__(self, write: BatchWriter, limits: PipelineLimits, metrics: Metrics) -> None:
        self._write = write
        self._limits = limits
        self._metrics = metrics
        self._pending: deque[Work] = deque()
        self._pending_rows = 0
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Condition()
        self._closing = False
        self.healthy = True
        """False while the last write attempt failed (reported by /readyz)."""

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    async def submit(self, work: Work) -> asyncio.Future[None]:
        """Queue ``work``; the returned future resolves once it is committed."""
        rows = work.rows
        async with self._room:
            await self._room.wait_for(
                lambda: self._pending_rows + rows <= self._limits.max_pending or not self._pending
            )
        work.done = asyncio.get_running_loop().create_future()
        self._pending.append(work)
        self._pending_rows += rows
        self._metrics.queue_depth.set(self._pending_rows)
        self._has_work.set()
        if self._pending_rows >= self._limits.max_rows:
            self._full.set()
        return work.done

    async def run(self) -> None:
        """Flush loop; returns after :meth:`close` once everything pending is written."""
        while True:
            await self._has_work.wait()
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._limits.max_age_s)
            batch = self._take()
            if batch:
                await self._flush(batch)
            elif self._closing:
                return

    async def close(self) -> None:
        """Stop waiting for batches to fill; :meth:`run` drains what is pending and returns."""
        self._closing = True
        self._has_work.set()

    def _take(self) -> list[Work]:
        """Pop up to ``max_rows`` rows' worth of work from the front (at least one item)."""
        batch: list[Work] = []
        rows = 0
        pending = self._pending
        while pending and (not batch or rows + pending[0].rows <= self._limits.max_rows):
            work = pending.popleft()
            batch.append(work)
            rows += work.rows
        self._pending_rows -= rows
        if not pending and not self._closing:
            self._has_work.clear()
        if self._pending_rows < self._limits.max_rows:
            self._full.clear()
        return batch

    async def _flush(self, batch: list[Work]) -> None:
        delay = self._limits.retry_initial_s
        started = time.perf_counter()
        while True:
            try:
                try:
                    result = await self._write(batch)
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    # The data itself was refused (a constraint not checked up front): isolate
                    # the offending messages so that one bad message cannot block the stream.
                    log.error("batch refused by the database (%s); writing message by message", exc)
                    result = await self._write_one_by_one(batch)
            except psycopg.OperationalError as exc:
                self.healthy = False
                self._metrics.flush_errors.inc()
                log.warning("database unavailable, batch of %d messages kept: %s", len(batch), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._limits.retry_max_s)
                continue
            break
        self.healthy = True
        self._metrics.record_batch(
            result, messages=len(batch), seconds=time.perf_counter() - started
        )
        self._metrics.queue_depth.set(self._pending_rows)
        for work in batch:
            if work.done is not None and not work.done.done():
                work.done.set_result(None)
        async with self._room:
            self._room.notify_all()

    async def _write_one_by_one(self, batch: list[Work]) -> BatchResult:
        totals = [0, 0, 0, 0]
        for work in batch:
            try:
                result = await self._write([work])
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:  # this message alone is refused: keep it, with why
                refused = Work(
                    topic=work.topic,
                    payload=work.payload,
                    dead=DeadLetter(work.topic, work.payload, "storage_rejected", str(exc)[:500]),
                )
                result = await self._write([refused])
            for i, n in enumerate(
                (
                    result.readings_staged,
                    result.readings_stored,
                    result.events_stored,
                    result.dead_letters,
                )
            ):
                totals[i] += n
        return BatchResult(*totals)
