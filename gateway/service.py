"""The gateway service: builds its resources, runs its loops, shuts down cleanly.

:func:`run_gateway` is the lifespan. It opens the database pool, checks the key store, and runs
the MQTT client, the intake, the ingest flush loop, the meter-zone listener, the detection loop,
the optional Modbus poller and the HTTP server in one ``TaskGroup`` (each task named). On the
``stop`` event it stops the intake (no new message is taken), drains the pipeline so that every
message taken is committed and acknowledged within the grace period, leaves the broker and
closes the pool, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.control.dispatch import CommandLoop, LoopOptions
from gateway.detection.model import Rules
from gateway.detection.service import DetectionOptions, Detector
from gateway.errors import GatewayError
from gateway.http.app import create_app
from gateway.http.custody import Custody
from gateway.http.deps import Services
from gateway.http.exports import ExportConnections, export_pool
from gateway.http.security import access_from_settings
from gateway.ingest.consumer import MessageDecoder
from gateway.ingest.intake import MessageIntake
from gateway.ingest.pipeline import IngestPipeline, PipelineLimits
from gateway.ingest.writer import STAGING_DDL, BatchStore
from gateway.ingest.zones import MeterZones
from gateway.keystore import SoftwareKeyStore
from gateway.keystore.startup import open_keystore, verify_keystore
from gateway.metrics import Metrics
from gateway.modbus.allowlist import HostAllowList
from gateway.mqtt import MqttClient, MqttOptions
from gateway.runtime import listen
from gateway.settings import Settings
from gateway.vending import build_vending
from gateway.vending.delivery import run_delivery
from gateway.vending.keys import GatewayKeyStoreKeys
from protocols.topics import TopicKind, Topics

__all__ = ["GatewayHandle", "run_gateway", "subscription_filters"]

log = logging.getLogger(__name__)

_CONSUMED = (
    TopicKind.TELEMETRY,
    TopicKind.CONCENTRATOR_TELEMETRY,
    TopicKind.EVENTS,
    TopicKind.STATUS,
    TopicKind.COMMAND_REPLY,
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


async def _run_modbus(settings: Settings, services: Services, stop: asyncio.Event) -> None:
    from gateway.modbus import run_modbus_poller  # noqa: PLC0415 - only when enabled

    await run_modbus_poller(
        pool=services.pool,
        pipeline=services.pipeline,
        metrics=services.metrics,
        stop=stop,
        refresh_s=settings.modbus_refresh_s,
        concurrency=settings.modbus_concurrency,
        request_timeout_s=settings.modbus_request_timeout_ms / 1000,
        connect_timeout_s=settings.modbus_connect_timeout_ms / 1000,
        pacing_s=settings.modbus_pacing_ms / 1000,
        interval_s=settings.modbus_interval_s,
        backoff_max_s=settings.modbus_backoff_max_s,
        verified_only=settings.modbus_verified_only,
        allowed=HostAllowList(settings.modbus_networks),
    )


def _detector(settings: Settings, services: Services) -> Detector:
    options = DetectionOptions(
        rules=Rules.from_overrides(settings.detection_rules),
        poll_s=settings.detection_poll_ms / 1000,
        sweep_s=settings.detection_sweep_ms / 1000,
        batch=settings.detection_batch,
        worker=settings.detection_worker,
    )
    return Detector(services.pool, options)


async def _configure(conn: AsyncConnection[tuple[object, ...]]) -> None:
    await conn.execute(STAGING_DDL)
    await conn.commit()


def _build_client(settings: Settings, topics: Topics) -> MqttClient:
    creds = settings.mqtt_credentials
    return MqttClient(
        MqttOptions(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            client_id=settings.mqtt_client_id,
            # A process without the ingest part only publishes (commands, keypad tokens).
            filters=(
                subscription_filters(topics, settings.mqtt_shared_group)
                if settings.runs("ingest")
                else []
            ),
            tls=settings.mqtt_tls,
            username=creds[0] if creds else None,
            password=creds[1] if creds else None,
            session_expiry_s=settings.mqtt_session_expiry_s,
            receive_maximum=settings.mqtt_receive_maximum,
        )
    )


def _build_services(settings: Settings, zones: MeterZones) -> Services:
    """Pool (not yet open), MQTT client, pipeline and intake, wired at construction.

    Nothing connects here. The client is the pipeline's acknowledger and the intake's source;
    the intake feeds the pipeline.
    """
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

    client = _build_client(settings, topics)
    pipeline = IngestPipeline(
        # Fail fast on a busy pool, so that the pipeline's retry loop, with its back-off and
        # health flag, is what waits for the database.
        BatchStore(pool, connect_timeout_s=5.0),
        PipelineLimits(
            max_rows=settings.batch_max_rows,
            max_age_s=settings.batch_max_age_ms / 1000,
            max_pending=settings.ingest_max_pending_rows,
        ),
        metrics,
        acknowledger=client,
    )
    decode = MessageDecoder(
        topics,
        zone_of=zones,
        on_internal_error=lambda kind: metrics.decode_internal_errors.labels(exception=kind).inc(),
    )
    intake = MessageIntake(client, topics, pipeline, metrics, decode=decode)
    metrics.mqtt_connected.set_function(lambda: float(client.connected.is_set()))
    return Services(
        pool=pool,
        mqtt=client,
        intake=intake,
        pipeline=pipeline,
        metrics=metrics,
        ingesting=settings.runs("ingest"),
    )


def _http_config(
    settings: Settings,
    services: Services,
    keystore: SoftwareKeyStore | None,
    downloads: AsyncConnectionPool,
) -> uvicorn.Config:
    db_wait_s = settings.http_db_wait_ms / 1000
    return uvicorn.Config(
        create_app(
            services,
            access_from_settings(settings, services.pool),
            Custody(keystore=keystore, provisioning_dir=settings.provisioning_dir),
            max_body_bytes=settings.http_max_body_bytes,
            db_wait_s=db_wait_s,
            vending=build_vending(
                services.pool,
                settings,
                GatewayKeyStoreKeys(keystore) if keystore is not None else None,
            ),
            exports=ExportConnections(
                downloads, slots=settings.http_export_connections, wait_s=db_wait_s
            ),
        ),
        log_config=None,
        lifespan="off",
        ssl_certfile=settings.tls_cert_file if settings.tls else None,
        ssl_keyfile=settings.tls_key_file if settings.tls else None,
        proxy_headers=settings.behind_tls_proxy,
        forwarded_allow_ips=settings.trusted_proxies if settings.behind_tls_proxy else None,
        server_header=False,
    )


def _start_credit_control(
    tg: asyncio.TaskGroup,
    settings: Settings,
    services: Services,
    stop: asyncio.Event,
    keystore: SoftwareKeyStore | None,
) -> None:
    """Credit control's loops: the command loop (signing, publishing and confirming commands
    to meters, with the key store) and the notifier draining the notification outbox."""
    from gateway.control.notifier import (  # noqa: PLC0415 - httpx only when it runs
        Channel,
        LogChannel,
        WebhookChannel,
        run_notifier,
    )
    from gateway.control.policy import DEFAULT_POLICY  # noqa: PLC0415

    if keystore is None:
        log.warning("no key store (GATEWAY_MASTER_KEY_FILE unset): commands to meters stay planned")
    else:
        loop = CommandLoop(
            services.pool,
            keystore,
            services.mqtt.publish,
            Topics(settings.mqtt_topic_prefix),
            LoopOptions(interval_s=settings.command_poll_ms / 1000),
        )
        tg.create_task(loop.run(stop), name="meter-commands")
    if not settings.notify_enabled:
        return
    url = settings.notify_webhook_url
    channel: Channel = WebhookChannel(url.get_secret_value()) if url else LogChannel()
    tg.create_task(
        run_notifier(
            settings.database_url.get_secret_value(), channel, stop, zone=DEFAULT_POLICY.zone
        ),
        name="notifier",
    )


async def _drain(settings: Settings, services: Services, flush_task: asyncio.Task[None]) -> None:
    """Commit and acknowledge what intake took (within the grace period), then leave the broker.

    Intake has stopped before this: the set of work to drain is fixed, and at most what our
    Receive Maximum let the broker send. What could not be committed in time stays
    un-acknowledged, and the broker sends it again to the next session.
    """
    pipeline = services.pipeline
    log.info("stopping: draining %d pending rows", pipeline.pending_rows)
    await pipeline.close()
    try:
        await asyncio.wait_for(asyncio.shield(flush_task), settings.shutdown_grace_s)
    except TimeoutError:
        log.warning(
            "could not commit %d pending rows within %.0f s; leaving them to the broker",
            pipeline.pending_rows,
            settings.shutdown_grace_s,
        )
        flush_task.cancel()
    await services.mqtt.close()


async def _run_tasks(
    settings: Settings,
    services: Services,
    stop: asyncio.Event,
    *,
    started: asyncio.Future[GatewayHandle] | None,
    server: _Server | None,
    sock: socket.socket | None,
    zones: MeterZones,
    keystore: SoftwareKeyStore | None,
) -> None:
    """The service's loops in one TaskGroup; on ``stop``: intake, modbus, drain, HTTP, in order."""
    try:
        async with asyncio.TaskGroup() as tg:
            ingest = settings.runs("ingest")
            flush_task = tg.create_task(services.pipeline.run(), name="ingest-flush")
            if settings.detection_enabled and settings.runs("detection"):
                tg.create_task(_detector(settings, services).run(stop), name="detection")
            if settings.runs("control"):
                _start_credit_control(tg, settings, services, stop, keystore)
            if settings.runs("http"):
                tg.create_task(
                    run_delivery(
                        services.pool,
                        services.mqtt.publish,
                        Topics(settings.mqtt_topic_prefix),
                        stop,
                    ),
                    name="keypad-delivery",
                )
            if server is not None and sock is not None:
                tg.create_task(server.serve(sockets=[sock]), name="http")
            modbus_task = (
                tg.create_task(_run_modbus(settings, services, stop), name="modbus-poller")
                if settings.modbus_enabled and ingest
                else None
            )
            stop_task = tg.create_task(stop.wait(), name="stop-signal")
            tg.create_task(
                zones.run(settings.database_url.get_secret_value(), stop), name="meter-zones"
            )
            # Meter zones first: a message decoded before they are loaded would read a local
            # time as UTC.
            zones_ready = tg.create_task(zones.listening.wait(), name="meter-zones-ready")
            await asyncio.wait({zones_ready, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            zones_ready.cancel()
            mqtt_task = tg.create_task(services.mqtt.run(), name="mqtt")
            intake_task = (
                tg.create_task(services.intake.run(), name="mqtt-intake") if ingest else None
            )
            # Running once subscribed; a process that only publishes, once connected.
            ready = services.mqtt.subscribed if ingest else services.mqtt.connected
            subscribed = tg.create_task(ready.wait(), name="mqtt-ready")
            await asyncio.wait(
                {subscribed, stop_task, mqtt_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if subscribed.done():
                port = sock.getsockname()[1] if sock is not None else None
                log.info(
                    "gateway running",
                    extra={"settings": settings.describe(), "http_port": port},
                )
                if started is not None and not started.done():
                    started.set_result(GatewayHandle(services, port))
            else:
                subscribed.cancel()
            await asyncio.wait({stop_task, mqtt_task}, return_when=asyncio.FIRST_COMPLETED)
            # Stop taking messages first, so that the drain has a fixed set of work to commit.
            services.intake.stop()
            if intake_task is not None:
                await intake_task
            if modbus_task is not None:
                await modbus_task  # its last polls go into the pipeline before it drains
            await _drain(settings, services, flush_task)
            stop_task.cancel()
            if server is not None:
                server.should_exit = True
    except BaseExceptionGroup as group:
        # A task failed for good (the broker refused our credentials …): report that error
        # itself, as the CLI reports any GatewayError, rather than the group around it.
        failed = [e for e in group.exceptions if isinstance(e, GatewayError)]
        if failed:
            raise failed[0] from group
        raise


async def run_gateway(
    settings: Settings,
    stop: asyncio.Event,
    *,
    started: asyncio.Future[GatewayHandle] | None = None,
    serve_http: bool = True,
) -> None:
    """Run until ``stop`` is set. ``started`` resolves once the intake is subscribed (without
    the ingest part: once the broker session is up)."""
    zones = MeterZones()
    services = _build_services(settings, zones)
    keystore = open_keystore(settings.master_key_file)
    # File downloads hold a connection for minutes: they get a small pool of their own.
    downloads = export_pool(
        settings.database_url.get_secret_value(), settings.http_export_connections
    )
    server: _Server | None = None
    sock: socket.socket | None = None
    try:
        await services.pool.open(wait=False)
        await verify_keystore(services.pool, keystore)
        if serve_http and settings.runs("http"):
            await downloads.open(wait=False)
            # Bind before serving so that the port is listening (and known, when 0 was asked
            # for) by the time ``started`` resolves.
            sock = listen(
                settings.http_host, settings.http_port, reuse_port=settings.http_reuse_port
            )
            server = _Server(_http_config(settings, services, keystore, downloads))
        await _run_tasks(
            settings,
            services,
            stop,
            started=started,
            server=server,
            sock=sock,
            zones=zones,
            keystore=keystore,
        )
    finally:
        await services.mqtt.close()
        await downloads.close()
        await services.pool.close()
        if sock is not None:
            sock.close()
        log.info("gateway stopped")
