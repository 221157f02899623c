"""The MQTT intake loop: take received messages, decode them, queue them for the pipeline.

:class:`MessageIntake` is given its source (anything with ``receive()``, the MQTT client), the
topic layout, the pipeline and the metrics at construction. :meth:`MessageIntake.run` takes
what the client has received, turns each message into work (the total
:class:`~gateway.ingest.consumer.MessageDecoder`: readings, events, status or a dead letter with
its reason), and offers it to the pipeline. While the
pipeline is over its pending limit it stops taking messages: they wait in the client, and the
broker holds the rest, since our Receive Maximum bounds what it sends before we acknowledge.

:meth:`MessageIntake.stop` ends the loop between two messages: on shutdown, intake stops first,
so that the pipeline drains a fixed set of work and everything taken is committed and
acknowledged; what was not taken stays un-acknowledged and the broker sends it again next time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Protocol, TypeVar

from gateway.ingest.consumer import MessageDecoder
from gateway.ingest.pipeline import IngestPipeline
from gateway.ingest.work import AckToken, Work
from gateway.metrics import Metrics
from protocols.topics import Topics

__all__ = ["DeadLetterLog", "MessageIntake", "MessageSource", "ReceivedMessage"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ReceivedMessage(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def ack(self) -> AckToken | None: ...


class MessageSource(Protocol):
    async def receive(self) -> Sequence[ReceivedMessage]: ...


class DeadLetterLog:
    """Logs a device's bad messages once per reason and quiet period, not once per message.

    Every dead letter is stored and counted regardless; this only keeps a broken or hostile
    device from flooding the log.
    """

    QUIET_S = 300.0
    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, topic: str, reason: str, detail: str) -> None:
        now = time.monotonic()
        key = (topic, reason)
        if now - self._last.get(key, -self.QUIET_S) < self.QUIET_S:
            return
        if len(self._last) >= self.MAX_KEYS:
            self._last.clear()
        self._last[key] = now
        log.warning(
            "dead-lettered message: %s (further %r from this topic quiet for %.0f s)",
            detail,
            reason,
            self.QUIET_S,
            extra={"topic": topic[:200], "reason": reason},
        )


class MessageIntake:
    """Moves messages from the MQTT client into the pipeline until stopped."""

    def __init__(
        self,
        source: MessageSource,
        topics: Topics,
        pipeline: IngestPipeline,
        metrics: Metrics,
        *,
        decode: Callable[[str, bytes], Work] | None = None,
    ) -> None:
        self._source = source
        self._decode = decode or MessageDecoder(topics)
        self._pipeline = pipeline
        self._metrics = metrics
        self._log_dead = DeadLetterLog()
        self._stopping = asyncio.Event()
        self.taken = 0
        """Messages handed to the pipeline so far."""

    def stop(self) -> None:
        """Take no further message; :meth:`run` returns at once."""
        self._stopping.set()

    async def run(self) -> None:
        """Take messages until :meth:`stop`; never waits on the database itself."""
        stopping = asyncio.create_task(self._stopping.wait(), name="intake-stop")
        try:
            while True:
                messages = await self._unless_stopped(self._source.receive(), stopping)
                if messages is None:
                    return  # nothing was taken: the client keeps its messages
                for message in messages:
                    if self._stopping.is_set():
                        return  # not taken: un-acknowledged, the broker sends it again
                    self._take(message)
                    if self._pipeline.over:
                        await self._unless_stopped(self._pipeline.wait_for_room(), stopping)
        finally:
            stopping.cancel()

    async def _unless_stopped(
        self, awaitable: Coroutine[object, object, T], stopping: asyncio.Task[object]
    ) -> T | None:
        task = asyncio.ensure_future(awaitable)
        if not self._stopping.is_set():
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        return None

    def _take(self, message: ReceivedMessage) -> None:
        work = self._decode(message.topic, message.payload)  # total: never raises
        work.ack = message.ack
        if work.dead is not None:
            self._metrics.dead_letters.labels(reason=work.dead.reason).inc()
            self._log_dead(message.topic, work.dead.reason, work.dead.detail)
        self._pipeline.offer(work)
        self.taken += 1
