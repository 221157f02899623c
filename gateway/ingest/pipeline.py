"""Batching between the intakes (MQTT, Modbus) and the database, with backpressure.

The MQTT intake hands each message over with :meth:`IngestPipeline.offer` (it must not block)
and waits with :meth:`IngestPipeline.wait_for_room` before taking more; other producers use
:meth:`IngestPipeline.submit` and may await the returned future. A single flush loop takes what
is pending when the batch is full (``max_rows``) or old enough (``max_age``), writes it in one
transaction, then hands the acknowledgement tokens of the committed batch to the
``acknowledger`` given at construction (the MQTT client) and resolves the futures.

While the database is slow or down, the batch retries with exponential back-off and jitter
(``stamina``), and new work piles up to ``max_pending`` rows; past that the intake stops taking
messages (the broker holds the rest: our Receive Maximum bounds what it sends before we
acknowledge) and ``submit`` waits, until a flush has made room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import stamina

from gateway.errors import StorageRejectedError, StorageUnavailableError
from gateway.ingest.work import AckToken, DeadLetter, Work
from gateway.ingest.writer import BatchResult
from gateway.metrics import Metrics

__all__ = ["Acknowledger", "IngestPipeline", "PipelineLimits"]

log = logging.getLogger(__name__)

BatchWriter = Callable[[Sequence[Work]], Awaitable[BatchResult]]


class Acknowledger(Protocol):
    """Whoever acknowledges committed messages to their source (the MQTT client)."""

    def acknowledge(self, tokens: Iterable[AckToken]) -> int: ...


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    max_rows: int = 20_000
    max_age_s: float = 0.1
    max_pending: int = 400_000
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    retry_jitter_s: float = 0.5


class IngestPipeline:
    def __init__(
        self,
        write: BatchWriter,
        limits: PipelineLimits,
        metrics: Metrics,
        *,
        acknowledger: Acknowledger | None = None,
    ) -> None:
        self._write = write
        self._acknowledger = acknowledger
        self._over = False
        self._limits = limits
        self._metrics = metrics
        self._pending: deque[Work] = deque()
        self._queued_rows = 0
        """Rows offered but not yet taken into a batch."""
        self._inflight_rows = 0
        """Rows of the batch being written (kept until it commits, through any retries)."""
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Condition()
        self._closing = False
        self.healthy = True
        """False while the last write attempt failed (reported by /readyz)."""
        # Read at scrape time: a gauge set on every message costs a lock per message.
        metrics.queue_depth.set_function(lambda: float(self.pending_rows))

    @property
    def pending_rows(self) -> int:
        """Rows received and not yet committed: queued plus the batch being written."""
        return self._queued_rows + self._inflight_rows

    @property
    def over(self) -> bool:
        """True from the moment pending rows passed ``max_pending`` until a flush made room."""
        return self._over

    def offer(self, work: Work) -> None:
        """Queue ``work`` without waiting (the MQTT intake); acknowledged after commit."""
        self._append(work)
        if self.pending_rows > self._limits.max_pending:
            self._over = True

    async def wait_for_room(self) -> None:
        """Return once pending rows are within ``max_pending`` (at once if they are)."""
        if not self._over:
            return
        async with self._room:
            await self._room.wait_for(lambda: not self._over)

    def _append(self, work: Work) -> None:
        self._pending.append(work)
        self._queued_rows += work.rows
        self._has_work.set()
        if self._queued_rows >= self._limits.max_rows:
            self._full.set()

    async def submit(self, work: Work) -> asyncio.Future[None]:
        """Queue ``work``; the returned future resolves once it is committed."""
        rows = work.rows
        if self.pending_rows + rows > self._limits.max_pending and self._pending:
            async with self._room:
                await self._room.wait_for(
                    lambda: (
                        self.pending_rows + rows <= self._limits.max_pending or not self._pending
                    )
                )
        done = work.done = asyncio.get_running_loop().create_future()
        self._append(work)
        return done

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
        self._queued_rows -= rows
        self._inflight_rows = rows
        if not pending and not self._closing:
            self._has_work.clear()
        if self._queued_rows < self._limits.max_rows:
            self._full.clear()
        return batch

    async def _flush(self, batch: list[Work]) -> None:
        limits = self._limits
        started = time.perf_counter()
        async for attempt in stamina.retry_context(
            on=StorageUnavailableError,
            attempts=None,
            timeout=None,
            wait_initial=limits.retry_initial_s,
            wait_max=limits.retry_max_s,
            wait_jitter=limits.retry_jitter_s,
        ):
            with attempt:
                try:
                    result = await self._write_isolating(batch)
                except StorageUnavailableError as exc:
                    self.healthy = False
                    self._metrics.flush_errors.inc()
                    if attempt.num == 1:
                        log.warning(
                            "database unavailable, batch of %d messages kept: %s", len(batch), exc
                        )
                    raise
        self.healthy = True
        self._metrics.record_batch(
            result, kinds=Counter(w.kind for w in batch), seconds=time.perf_counter() - started
        )
        if self._acknowledger is not None:
            self._acknowledger.acknowledge(w.ack for w in batch if w.ack is not None)
        for work in batch:
            if work.done is not None and not work.done.done():
                work.done.set_result(None)
        self._inflight_rows = 0
        if self._over and self.pending_rows <= limits.max_pending:
            self._over = False
        async with self._room:
            self._room.notify_all()

    async def _write_isolating(self, batch: list[Work]) -> BatchResult:
        try:
            return await self._write(batch)
        except StorageUnavailableError:
            raise
        except StorageRejectedError as exc:
            # The data itself was refused (a constraint not checked up front): isolate the
            # offending messages so that one bad message cannot block the stream.
            log.error("batch refused by the database (%s); writing message by message", exc)
            return await self._write_one_by_one(batch)
        except Exception:
            # A defect in the writer fails this batch only, never the flush loop: its messages
            # are written one by one, and any that still fail are kept as dead letters.
            log.exception("batch write failed unexpectedly; writing message by message")
            return await self._write_one_by_one(batch)

    async def _write_one_by_one(self, batch: list[Work]) -> BatchResult:
        total = BatchResult()
        for work in batch:
            try:
                result = await self._write([work])
            except StorageUnavailableError:
                raise
            except Exception as exc:  # this message alone is refused: keep it, with why
                reason = (
                    "storage_rejected"
                    if isinstance(exc, StorageRejectedError)
                    else "internal_error"
                )
                detail = str(exc) if reason == "storage_rejected" else type(exc).__name__
                refused = Work(
                    topic=work.topic,
                    payload=work.payload,
                    dead=DeadLetter(work.topic, work.payload, reason, detail[:500]),
                )
                result = await self._write([refused])
            total = total + result
        return total
