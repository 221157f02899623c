"""The ingest pipeline (batching, refused messages, retry, backpressure) and the intake.

The writer here is an in-memory stand-in: these tests are about the pipeline's own logic
(storage itself is tested against PostgreSQL in test_ingest_e2e and test_reliability).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import pytest

from gateway.errors import StorageRejectedError, StorageUnavailableError
from gateway.ingest.intake import DeadLetterLog, MessageIntake
from gateway.ingest.pipeline import IngestPipeline, PipelineLimits
from gateway.ingest.work import AckToken, Work
from gateway.ingest.writer import BatchResult
from gateway.metrics import Metrics
from gateway.mqtt import MessageReceived
from protocols.telemetry import Reading
from protocols.topics import Topics

TS = datetime(2026, 11, 1, tzinfo=UTC)


def work(meter: str, n: int = 1, ack: AckToken | None = None) -> Work:
    readings = [Reading(meter, TS, "1.8.0", float(i), None, "measured") for i in range(n)]
    return Work(
        topic=f"meters/{meter}/telemetry",
        payload=b"x",
        kind="telemetry",
        readings=readings,
        ack=ack,
    )


class Acks:
    """Records what the pipeline acknowledges, and how many writes had committed by then."""

    def __init__(self, writer: FakeWriter | None = None) -> None:
        self.tokens: list[AckToken] = []
        self.writer = writer
        self.committed_batches_at_ack: list[int] = []

    def acknowledge(self, tokens: Iterable[AckToken]) -> int:
        got = list(tokens)
        self.tokens.extend(got)
        if self.writer is not None:
            self.committed_batches_at_ack.append(len(self.writer.batches))
        return len(got)


class FakeWriter:
    def __init__(self) -> None:
        self.batches: list[list[Work]] = []
        self.refuse: set[str] = set()
        self.down = 0

    async def __call__(self, batch: Sequence[Work]) -> BatchResult:
        if self.down:
            self.down -= 1
            raise StorageUnavailableError("connection refused")
        if any(w.readings and w.readings[0].meter_id in self.refuse for w in batch):
            raise StorageRejectedError("value refused")
        self.batches.append(list(batch))
        staged = sum(len(w.readings) for w in batch)
        return BatchResult(staged, staged, 0, sum(w.dead is not None for w in batch))


async def run_until_drained(pipeline: IngestPipeline) -> None:
    task = asyncio.create_task(pipeline.run())
    await pipeline.close()
    await asyncio.wait_for(task, 10)


async def test_batches_are_cut_at_max_rows() -> None:
    writer = FakeWriter()
    pipeline = IngestPipeline(writer, PipelineLimits(max_rows=10, max_age_s=5), Metrics())
    for i in range(7):
        pipeline.offer(work(f"M{i}", 4))  # 5 rows each (4 readings + 1)
    await run_until_drained(pipeline)
    assert [len(b) for b in writer.batches] == [2, 2, 2, 1]
    assert pipeline.pending_rows == 0


async def test_a_refused_message_is_dead_lettered_alone_and_the_rest_commit() -> None:
    writer = FakeWriter()
    writer.refuse = {"BAD"}
    acks = Acks()
    pipeline = IngestPipeline(writer, PipelineLimits(max_rows=100), Metrics(), acknowledger=acks)
    for n, meter in enumerate(("A", "BAD", "C")):
        pipeline.offer(work(meter, ack=AckToken(1, n + 1, 1)))
    await run_until_drained(pipeline)
    stored = [w for b in writer.batches for w in b]
    assert [w.readings[0].meter_id for w in stored if w.readings] == ["A", "C"]
    [dead] = [w.dead for w in stored if w.dead is not None]
    assert dead.reason == "storage_rejected" and dead.topic == "meters/BAD/telemetry"
    # All three are acknowledged: two stored, one kept as a dead letter.
    assert [t.mid for t in acks.tokens] == [1, 2, 3]


FAST_RETRY = PipelineLimits(retry_initial_s=0.01, retry_max_s=0.02, retry_jitter_s=0.01)


async def test_database_outage_is_retried_until_it_commits_and_only_then_acknowledged() -> None:
    writer = FakeWriter()
    writer.down = 3
    acks = Acks(writer)
    pipeline = IngestPipeline(writer, FAST_RETRY, Metrics(), acknowledger=acks)
    pipeline.offer(work("A", ack=AckToken(1, 7, 1)))
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.005)
    await pipeline.close()
    await asyncio.wait_for(task, 10)
    assert writer.down == 0 and len(writer.batches) == 1 and pipeline.healthy
    assert acks.tokens == [AckToken(1, 7, 1)] and acks.committed_batches_at_ack == [1]


async def test_wait_for_room_holds_intake_until_a_flush_made_room() -> None:
    writer = FakeWriter()
    pipeline = IngestPipeline(
        writer, PipelineLimits(max_rows=1000, max_pending=1000, max_age_s=0.01), Metrics()
    )
    for i in range(30):
        pipeline.offer(work(f"M{i}", 49))  # 50 rows each: 1500 rows pending
    assert pipeline.over
    waiting = asyncio.create_task(pipeline.wait_for_room())
    await asyncio.sleep(0.02)
    assert not waiting.done()  # nothing flushed yet
    task = asyncio.create_task(pipeline.run())
    await asyncio.wait_for(waiting, 5)
    assert pipeline.pending_rows <= 1000 and not pipeline.over
    await pipeline.close()
    await asyncio.wait_for(task, 5)


async def test_submit_waits_for_room_and_resolves_after_commit() -> None:
    writer = FakeWriter()
    pipeline = IngestPipeline(writer, PipelineLimits(max_rows=1000, max_pending=1000), Metrics())
    first = await pipeline.submit(work("A", 899))
    blocked = asyncio.create_task(pipeline.submit(work("B", 199)))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # 900 + 200 rows would pass max_pending
    task = asyncio.create_task(pipeline.run())
    second = await asyncio.wait_for(blocked, 5)
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    await pipeline.close()
    await asyncio.wait_for(task, 5)
    assert [w.readings[0].meter_id for b in writer.batches for w in b] == ["A", "B"]


def test_dead_letter_logging_is_throttled_per_topic_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_dead = DeadLetterLog()
    with caplog.at_level("WARNING", logger="gateway.ingest.intake"):
        for _ in range(50):
            log_dead("meters/X/telemetry", "bad_json", "not JSON")
        log_dead("meters/X/telemetry", "unknown_channel", "x")
        log_dead("meters/Y/telemetry", "bad_json", "not JSON")
    assert len(caplog.records) == 3


async def test_a_batch_being_retried_still_counts_as_pending() -> None:
    writer = FakeWriter()
    writer.down = 10**6  # the database stays down for this test
    pipeline = IngestPipeline(
        writer,
        PipelineLimits(max_rows=10, max_age_s=0.001, retry_initial_s=0.01, retry_jitter_s=0.01),
        Metrics(),
    )
    for i in range(4):
        pipeline.offer(work(f"M{i}", 4))  # 5 rows each
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.05)  # the first batch is taken and failing
    assert writer.batches == [] and not pipeline.healthy
    assert pipeline.pending_rows == 20  # nothing committed: all of it is still held
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class FakeSource:
    """Stands in for the MQTT client: hands out what was put in, in batches."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[MessageReceived]] = asyncio.Queue()

    def put(self, *numbers: int) -> None:
        telemetry = b'{"ts": "2026-11-01T00:00:00Z", "values": {"1.8.0": 1}}'
        self.queue.put_nowait(
            [
                MessageReceived(f"meters/M{n}/telemetry", telemetry, 1, False, AckToken(1, n, 1))
                for n in numbers
            ]
        )

    async def receive(self) -> list[MessageReceived]:
        return await self.queue.get()


async def test_intake_stops_taking_messages_at_once_when_told() -> None:
    source, writer = FakeSource(), FakeWriter()
    pipeline = IngestPipeline(writer, PipelineLimits(max_age_s=5), Metrics())
    intake = MessageIntake(source, Topics(""), pipeline, Metrics())
    task = asyncio.create_task(intake.run())
    source.put(1, 2, 3)
    await asyncio.sleep(0.05)
    intake.stop()
    await asyncio.wait_for(task, 5)
    source.put(4, 5)
    await asyncio.sleep(0.05)
    assert intake.taken == 3 and pipeline.pending_rows == 3 * 2
    assert source.queue.qsize() == 1  # left with the client, to be redelivered


async def test_intake_waits_for_room_in_the_pipeline_and_leaves_the_rest_with_the_client() -> None:
    source, writer = FakeSource(), FakeWriter()
    writer.down = 10**6
    limits = PipelineLimits(max_rows=1000, max_pending=1000, max_age_s=5)
    pipeline = IngestPipeline(writer, limits, Metrics())
    intake = MessageIntake(source, Topics(""), pipeline, Metrics())
    task = asyncio.create_task(intake.run())
    source.put(*range(1, 1001))  # 2 rows each: 2000 rows offered at most if unchecked
    await asyncio.sleep(0.1)
    assert pipeline.over and intake.taken == 501  # just past 1000 rows, then it waits
    intake.stop()
    await asyncio.wait_for(task, 5)  # stopping does not wait for the database
    assert intake.taken == 501


async def test_intake_decodes_in_the_ingest_package_and_dead_letters_bad_messages() -> None:
    source, writer = FakeSource(), FakeWriter()
    pipeline = IngestPipeline(writer, PipelineLimits(max_age_s=5), Metrics())
    metrics = Metrics()
    intake = MessageIntake(source, Topics(""), pipeline, metrics)
    task = asyncio.create_task(intake.run())
    source.queue.put_nowait(
        [MessageReceived("meters/M1/telemetry", b"not json", 1, False, AckToken(1, 9, 1))]
    )
    await asyncio.sleep(0.05)
    intake.stop()
    await asyncio.wait_for(task, 5)
    [work] = list(pipeline._pending)
    assert work.dead is not None and work.ack == AckToken(1, 9, 1)
    assert metrics.dead_letters.labels(reason=work.dead.reason)._value.get() == 1


async def test_a_message_the_decoder_chokes_on_becomes_a_dead_letter_not_a_dead_intake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def choke(*args: object, **kwargs: object) -> Work:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr("gateway.ingest.consumer.decode_message", choke)
    source, writer = FakeSource(), FakeWriter()
    pipeline = IngestPipeline(writer, PipelineLimits(max_age_s=5), Metrics())
    intake = MessageIntake(source, Topics(""), pipeline, Metrics())
    task = asyncio.create_task(intake.run())
    source.put(1, 2)
    await asyncio.sleep(0.05)
    assert not task.done()  # still taking messages
    intake.stop()
    await asyncio.wait_for(task, 5)
    dead = [w.dead for w in pipeline._pending]
    assert [(d.reason, d.detail.split(":")[0]) for d in dead if d] == [
        ("internal_error", "OverflowError")
    ] * 2
