"""The gateway service: builds its resources, runs its loops, shuts down cleanly.

:func:`run_gateway` is the lifespan. It opens the database pool, connects the MQTT intake, starts
the ingest flush loop and the HTTP server in one ``TaskGroup`` (each task named), and on the
``stop`` event drains pending batches, disconnects and closes the pool, in that order, so that
every message whose data was committed also gets its acknowledgement when possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import uvicorn
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.http.app import create_app
from gateway.http.deps import Services
from gateway.ingest.consumer import decode_message
from gateway.ingest.pipeline import IngestPipeline, PipelineLimits
from gateway.ingest.work import Work
from gateway.ingest.writer import STAGING_DDL, BatchResult, write_batch
from gateway.metrics import Metrics
from gateway.mqtt import Handler, MqttIntake, MqttOptions
from gateway.settings import Settings
from protocols.topics import TopicKind, Topics

__all__ = ["GatewayHandle", "run_gateway", "subscription_filters"]

log = logging.getLogger(__name__)

_CONSUMED = (
    TopicKind.TELEMETRY,
    TopicKind.CONCENTRATOR_TELEMETRY,
    TopicKind.EVENTS,
    TopicKind.STATUS,
)


def subscription_filters(topics: Topics, shared_group: str) -> list[str]:
    filters = [topics.filter(kind) for kind in _CONSUMED]
    if shared_group:
        return [f"$share/{shared_group}/{f}" for f in filters]
    return filters


class _Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to the service."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(slots=True)
class GatewayHandle:
    """What a running gateway exposes to its caller (the demo, tests)."""

    services: Services
    http_port: int | None = None


async def _configure(conn: AsyncConnection[tuple[object, ...]]) -> None:
    await conn.execute(STAGING_DDL)
    await conn.commit()


def _make_handler(topics: Topics, pipeline: IngestPipeline, metrics: Metrics) -> Handler:
    """The per-message coroutine: decode, count, queue, and wait for the commit."""

    async def handle(topic: str, payload: bytes) -> None:
        work = decode_message(topics, topic, payload)
        metrics.messages_received.labels(kind=topic.rsplit("/", 1)[-1]).inc()
        metrics.readings_received.inc(len(work.readings))
        if work.dead is not None:
            metrics.dead_letters.labels(reason=work.dead.reason).inc()
            log.warning(
                "dead-lettered message: %s",
                work.dead.detail,
                extra={"topic": topic[:200], "reason": work.dead.reason},
            )
        await (await pipeline.submit(work))

    return handle


def _build_intake(settings: Settings, topics: Topics, handle: Handler) -> MqttIntake:
    creds = settings.mqtt_credentials
    return MqttIntake(
        MqttOptions(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            client_id=settings.mqtt_client_id,
            filters=subscription_filters(topics, settings.mqtt_shared_group),
            tls=settings.mqtt_tls,
            username=creds[0] if creds else None,
            password=creds[1] if creds else None,
            session_expiry_s=settings.mqtt_session_expiry_s,
            receive_maximum=settings.mqtt_receive_maximum,
        ),
        handle,
    )


async def run_gateway(
    settings: Settings,
    stop: asyncio.Event,
    *,
    started: asyncio.Future[GatewayHandle] | None = None,
    serve_http: bool = True,
) -> None:
    """Run until ``stop`` is set. ``started`` resolves once the intake is subscribed."""
    metrics = Metrics()
    topics = Topics(settings.mqtt_topic_prefix)
    pool = AsyncConnectionPool(
        settings.database_url.get_secret_value(),
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        configure=_configure,
        open=False,
        name="gateway",
    )
    await pool.open(wait=False)

    async def write(batch: Sequence[Work]) -> BatchResult:
        async with pool.connection() as conn:
            return await write_batch(conn, batch)

    pipeline = IngestPipeline(
        write,
        PipelineLimits(
            max_rows=settings.batch_max_rows,
            max_age_s=settings.batch_max_age_ms / 1000,
            max_pending=settings.ingest_max_pending_rows,
        ),
        metrics,
    )

    handle = _make_handler(topics, pipeline, metrics)
    intake = _build_intake(settings, topics, handle)
    metrics.mqtt_connected.set_function(lambda: float(intake.connected.is_set()))
    services = Services(pool=pool, intake=intake, pipeline=pipeline, metrics=metrics)
    server: _Server | None = None
    sock: socket.socket | None = None
    if serve_http:
        # Bind before serving so that the port is listening (and known, when 0 was asked for)
        # by the time ``started`` resolves.
        sock = socket.create_server((settings.http_host, settings.http_port), reuse_port=False)
        config = uvicorn.Config(create_app(services), log_config=None, lifespan="off")
        server = _Server(config)

    try:
        async with asyncio.TaskGroup() as tg:
            flush_task = tg.create_task(pipeline.run(), name="ingest-flush")
            if server is not None and sock is not None:
                tg.create_task(server.serve(sockets=[sock]), name="http")
            connect_task = tg.create_task(intake.connect(), name="mqtt-connect")
            stop_task = tg.create_task(stop.wait(), name="stop-signal")
            await asyncio.wait({connect_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if connect_task.done():
                port = sock.getsockname()[1] if sock is not None else None
                log.info(
                    "gateway running", extra={"settings": settings.describe(), "http_port": port}
                )
                if started is not None and not started.done():
                    started.set_result(GatewayHandle(services, port))
            else:
                connect_task.cancel()
            await stop_task
            log.info("stopping: draining %d pending rows", pipeline.pending_rows)
            await pipeline.close()
            await flush_task
            await intake.disconnect()
            if server is not None:
                server.should_exit = True
    finally:
        await intake.disconnect()
        await pool.close()
        if sock is not None:
            sock.close()
        log.info("gateway stopped")
