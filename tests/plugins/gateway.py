"""A gateway running in the test's event loop, and an MQTT test client (the gateway's own)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from gateway.mqtt import MqttClient, MqttOptions
from gateway.service import GatewayHandle, run_gateway
from gateway.settings import Settings


def make_settings(database_url: str, mqtt_url: str, topic_prefix: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "mqtt_url": mqtt_url,
        "mqtt_topic_prefix": topic_prefix,
        "mqtt_client_id": f"gw-test-{uuid.uuid4().hex[:10]}",
        "http_port": 0,
        "batch_max_age_ms": 20,
        "db_pool_min": 1,
        "db_pool_max": 4,
        "log_format": "text",
    }
    values.update(extra)
    return Settings(**values)


@asynccontextmanager
async def gateway_running(settings: Settings) -> AsyncIterator[GatewayHandle]:
    """Run the gateway until the block ends; fail the test if it dies on its own."""
    stop = asyncio.Event()
    started: asyncio.Future[GatewayHandle] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_gateway(settings, stop, started=started), name="test-gateway")
    done, _ = await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise AssertionError("gateway exited before it started")
    if not done:
        task.cancel()
        raise AssertionError("gateway did not start within 30 s")
    try:
        yield started.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
def gateway_settings(database_url: str, mqtt_url: str, topic_prefix: str) -> Settings:
    return make_settings(database_url, mqtt_url, topic_prefix)


@pytest.fixture
async def gateway(gateway_settings: Settings) -> AsyncIterator[GatewayHandle]:
    async with gateway_running(gateway_settings) as handle:
        yield handle


class MqttTestClient:
    """The gateway's own MQTT client used as a publisher: QoS 1, waiting for every PUBACK.

    ``subscribe`` filters (optional) make it a listener too: ``received`` collects what arrives
    (acknowledged at once).
    """

    def __init__(
        self, url: str, client_id: str | None = None, subscribe: Sequence[str] = ()
    ) -> None:
        parts = urlsplit(url)
        self.client = MqttClient(
            MqttOptions(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 1883,
                client_id=client_id or f"test-pub-{uuid.uuid4().hex[:10]}",
                filters=tuple(subscribe),
                session_expiry_s=0,
                reconnect_initial_s=0.1,
                reconnect_jitter_s=0.1,
            )
        )
        self.received: list[tuple[str, bytes]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def _listen(self) -> None:
        while True:
            for message in await self.client.receive():
                self.received.append((message.topic, message.payload))
                if message.ack is not None:
                    self.client.acknowledge([message.ack])

    async def __aenter__(self) -> MqttTestClient:
        self._tasks.append(asyncio.create_task(self.client.run(), name="test-mqtt"))
        self._tasks.append(asyncio.create_task(self._listen(), name="test-mqtt-listen"))
        await asyncio.wait_for(self.client.connected.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def publish_all(
        self, messages: Iterable[tuple[str, bytes]], *, retain: bool = False, window: int = 1000
    ) -> int:
        """Publish QoS 1 and wait until the broker acknowledged every message.

        At most ``window`` publishes are awaited at once; the client itself keeps within the
        broker's Receive Maximum (Mosquitto's default ``max_inflight_messages`` is 20).
        """
        count = 0
        pending: list[Awaitable[None]] = []
        for topic, payload in messages:
            pending.append(self.client.publish(topic, payload, qos=1, retain=retain))
            count += 1
            if len(pending) >= window:
                await asyncio.wait_for(asyncio.gather(*pending), 60)
                pending.clear()
        await asyncio.wait_for(asyncio.gather(*pending), 60)
        return count


async def wait_for_value(probe: Callable[[], Any], expected: Any, *, timeout: float = 30.0) -> Any:
    """Poll ``probe`` (sync or async) until it returns ``expected``; return the last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value == expected:
            return value
        await asyncio.sleep(0.05)
    return value


def db_scalar(url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None
