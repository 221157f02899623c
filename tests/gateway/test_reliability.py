"""Nothing lost, nothing twice: crashes, broker restarts, database cuts, shared load, fuzz.

Every test runs against a real PostgreSQL and a Mosquitto of its own (with persistence, and no
queue limit so that the broker holds what the gateway has not acknowledged).
"""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.dev.services import MosquittoProcess, free_port
from gateway.service import GatewayHandle
from tests.plugins.gateway import (
    MqttTestClient,
    db_scalar,
    gateway_running,
    make_settings,
    wait_for_value,
)
from tests.plugins.proxy import TcpProxy

T0_MS = calendar.timegm((2026, 10, 1, 0, 0, 0)) * 1000
PER_MESSAGE = 50


def numbered_messages(
    prefix: str, first: int, count: int, meters: int = 7
) -> list[tuple[str, bytes]]:
    """Messages ``first .. first+count-1``; message n carries readings n*50 .. n*50+49.

    Reading number r has value r and a timestamp unique within its meter, so that the
    stored set can be compared with what was sent, value by value.
    """
    messages = []
    for n in range(first, first + count):
        meter = f"R{n % meters}"
        body = [
            {"ts": T0_MS + (n * PER_MESSAGE + i) * 1000, "values": {"1.8.0": n * PER_MESSAGE + i}}
            for i in range(PER_MESSAGE)
        ]
        messages.append((f"{prefix}meters/{meter}/telemetry", json.dumps(body).encode()))
    return messages


def assert_exactly(url: str, messages: int) -> None:
    expected = messages * PER_MESSAGE
    stored, distinct_values, total = (
        db_scalar(url, "SELECT count(*) FROM readings"),
        db_scalar(url, "SELECT count(DISTINCT value) FROM readings"),
        db_scalar(url, "SELECT sum(value)::bigint FROM readings"),
    )
    assert (stored, distinct_values, total) == (expected, expected, expected * (expected - 1) // 2)


async def wait_stored(url: str, messages: int, timeout: float = 60) -> None:
    await wait_for_value(
        lambda: db_scalar(url, "SELECT count(*) FROM readings"),
        messages * PER_MESSAGE,
        timeout=timeout,
    )


def gateway_env(database_url: str, mqtt_url: str, prefix: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_MQTT_URL=mqtt_url,
        GATEWAY_MQTT_TOPIC_PREFIX=prefix,
        GATEWAY_MQTT_CLIENT_ID="gw-crash-test",
        GATEWAY_HTTP_PORT=str(port),
        GATEWAY_BATCH_MAX_AGE_MS="20",
        GATEWAY_BATCH_MAX_ROWS="2000",
        GATEWAY_LOG_FORMAT="text",
    )
    return env


async def start_gateway_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [Path(sys.executable).parent / "gateway", "run"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}/readyz"
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited: {log.read_text()[-2000:]}")
            try:
                if (await http.get(url, timeout=1)).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()  # never leave it running behind a failed test
    proc.wait(10)
    raise AssertionError("gateway did not become ready")


async def test_kill_9_mid_stream_then_restart_stores_every_reading_once(
    database_url: str, private_broker: MosquittoProcess, topic_prefix: str, tmp_path: Path
) -> None:
    env = gateway_env(database_url, private_broker.url, topic_prefix, free_port())
    log = tmp_path / "gateway.log"
    proc = await start_gateway_process(env, log)
    count = 2000
    try:
        async with MqttTestClient(private_broker.url) as client:
            publisher = asyncio.create_task(
                client.publish_all(numbered_messages(topic_prefix, 0, count), window=100)
            )
            await wait_for_value(
                lambda: db_scalar(database_url, "SELECT count(*) > 0 FROM readings"), True
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            stored_at_kill = db_scalar(database_url, "SELECT count(*) FROM readings")
            await publisher  # the stream goes on while the gateway is down; the broker holds it
        # Mid-stream: some of the stream was stored and some was not when the process died.
        assert 0 < stored_at_kill < count * PER_MESSAGE
        assert "stopping" not in log.read_text()  # no drain ran: it was a kill, not a stop
        proc = await start_gateway_process(env, log)
        await wait_stored(database_url, count, timeout=120)
        await asyncio.sleep(0.5)  # let any redelivered duplicates arrive, to be ignored
        assert_exactly(database_url, count)
    finally:
        proc.kill()
        proc.wait(10)


async def test_repeated_stops_under_load_acknowledge_everything_each_run_took(
    database_url: str, private_broker: MosquittoProcess, topic_prefix: str
) -> None:
    """A persistent session stopped and started while the stream runs.

    Each stop commits and acknowledges every message its intake took, within the grace
    period; so across all runs each message is taken exactly once (one taken twice would mean
    its acknowledgement was lost, one never taken would be missing) and nothing is a duplicate.
    """
    settings = make_settings(
        database_url,
        private_broker.url,
        topic_prefix,
        mqtt_client_id=f"gw-restarts-{topic_prefix[5:-1]}",
        batch_max_rows=2000,
        mqtt_receive_maximum=200,
    )
    count = 1500

    async def paced_stream(client: MqttTestClient) -> None:
        for first in range(0, count, 25):
            await client.publish_all(numbered_messages(topic_prefix, first, 25))
            await asyncio.sleep(0.02)

    taken: list[int] = []
    duplicates: list[float] = []

    def record(gw: GatewayHandle) -> None:
        assert gw.services.pipeline.pending_rows == 0  # everything taken was committed
        taken.append(gw.services.intake.taken)
        duplicates.append(gw.services.metrics.readings_duplicate._value.get())

    async with MqttTestClient(private_broker.url) as client:
        publisher: asyncio.Task[None] | None = None
        while publisher is None or not publisher.done():
            async with gateway_running(settings) as gw:
                if publisher is None:  # the session exists now: the broker keeps the stream
                    publisher = asyncio.create_task(paced_stream(client))
                await wait_for_value(lambda: gw.services.intake.taken > 50, True)
                await asyncio.sleep(0.3)
            record(gw)
        await publisher
    async with gateway_running(settings) as gw:
        await wait_stored(database_url, count)
        await asyncio.sleep(0.5)
    record(gw)
    assert len(taken) >= 3  # the stream really spanned several stops
    assert sum(taken) == count and sum(duplicates) == 0
    assert_exactly(database_url, count)


async def test_broker_restart_mid_stream_loses_nothing(
    database_url: str, private_broker: MosquittoProcess, topic_prefix: str
) -> None:
    settings = make_settings(database_url, private_broker.url, topic_prefix, batch_max_rows=500)
    async with gateway_running(settings):
        async with MqttTestClient(private_broker.url) as client:
            await client.publish_all(numbered_messages(topic_prefix, 0, 150))
        private_broker.stop()  # SIGTERM: Mosquitto saves its persistence file
        await asyncio.sleep(0.5)
        private_broker.start()
        async with MqttTestClient(private_broker.url) as client:
            await client.publish_all(numbered_messages(topic_prefix, 150, 150))
        await wait_stored(database_url, 300)
        await asyncio.sleep(0.5)
        assert_exactly(database_url, 300)


@pytest.fixture
async def db_proxy(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the test database, and the database URL through it."""
    parts = urlsplit(database_url)
    if parts.hostname is None:
        pytest.skip("database reached over a Unix socket; the TCP proxy cannot sit in between")
    proxy = TcpProxy(parts.hostname, parts.port or 5432)
    port = await proxy.start()
    yield proxy, database_url.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{port}")


async def test_database_cut_holds_messages_at_the_broker_and_recovers(
    database_url: str,
    db_proxy: tuple[TcpProxy, str],
    private_broker: MosquittoProcess,
    topic_prefix: str,
) -> None:
    proxy, proxied = db_proxy
    settings = make_settings(
        proxied,
        private_broker.url,
        topic_prefix,
        batch_max_rows=1000,
        ingest_max_pending_rows=2000,
        mqtt_receive_maximum=100,
    )
    async with gateway_running(settings) as gw:
        async with MqttTestClient(private_broker.url) as client:
            await client.publish_all(numbered_messages(topic_prefix, 0, 40))
            await wait_stored(database_url, 40)
            proxy.cut()
            await client.publish_all(numbered_messages(topic_prefix, 40, 400))
            # Memory stays bounded: past 2000 pending rows the gateway stops reading; what
            # was already read (at most Receive Maximum = 100 messages) still arrives.
            pipeline = gw.services.pipeline
            assert await wait_for_value(lambda: pipeline.over, True, timeout=60) is True
            peak = 0
            for _ in range(20):
                peak = max(peak, pipeline.pending_rows)
                await asyncio.sleep(0.05)
            assert 2000 < peak <= 2000 + 100 * PER_MESSAGE
            assert peak < 400 * PER_MESSAGE  # far from everything that was published
            assert await wait_for_value(lambda: pipeline.healthy, False, timeout=60) is False
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{gw.http_port}/readyz")
            assert ready.status_code == 503
            assert db_scalar(database_url, "SELECT count(*) FROM readings") == 40 * PER_MESSAGE
            proxy.restore()
            await wait_stored(database_url, 440, timeout=90)
        await asyncio.sleep(0.5)
        assert_exactly(database_url, 440)
        assert gw.services.pipeline.healthy


async def test_database_outage_longer_than_the_keepalive_is_ridden_out_on_one_connection(
    database_url: str,
    db_proxy: tuple[TcpProxy, str],
    private_broker: MosquittoProcess,
    topic_prefix: str,
) -> None:
    """130 s without a database, more than four MQTT keepalive intervals (30 s)."""
    proxy, proxied = db_proxy
    settings = make_settings(
        proxied, private_broker.url, topic_prefix, batch_max_rows=1000, mqtt_receive_maximum=100
    )
    async with gateway_running(settings) as gw:
        mqtt = gw.services.mqtt
        async with MqttTestClient(private_broker.url) as client:
            await client.publish_all(numbered_messages(topic_prefix, 0, 20))
            await wait_stored(database_url, 20)
            proxy.cut()
            await client.publish_all(numbered_messages(topic_prefix, 20, 300))
            await asyncio.sleep(130)
            assert db_scalar(database_url, "SELECT count(*) FROM readings") == 20 * PER_MESSAGE
            assert mqtt.connected.is_set() and mqtt.connections == 1  # no reconnect churn
            proxy.restore()
            await wait_stored(database_url, 320, timeout=120)
        await asyncio.sleep(0.5)
        assert_exactly(database_url, 320)
        assert mqtt.connections == 1
        assert gw.services.metrics.readings_duplicate._value.get() == 0


async def test_two_gateways_sharing_a_subscription_store_the_same_as_one(
    database_url: str, private_broker: MosquittoProcess, topic_prefix: str
) -> None:
    common = {"mqtt_shared_group": "ingest", "batch_max_rows": 500}
    one = make_settings(database_url, private_broker.url, topic_prefix, **common)
    two = make_settings(database_url, private_broker.url, topic_prefix, **common)
    async with gateway_running(one) as gw1, gateway_running(two) as gw2:
        async with MqttTestClient(private_broker.url) as client:
            messages = numbered_messages(topic_prefix, 0, 300)
            await client.publish_all(messages + messages[:50])  # and some duplicates
        await wait_stored(database_url, 300)
        await asyncio.sleep(0.5)
        assert_exactly(database_url, 300)
        counts = [
            gw.services.metrics.messages_received.labels(kind="telemetry")._value.get()
            for gw in (gw1, gw2)
        ]
    assert sum(counts) == 350 and min(counts) > 0


def mutate(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randint(1, 6)):
        action = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if action == 0 and data:
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif action == 1:
            del data[pos : pos + rng.randint(1, 8)]
        elif action == 2:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data[pos:pos] = rng.choice([b"{", b"]", b'"', b"null", b"1e999", b"-", b"\\u0000"])
    return bytes(data)


async def test_fuzzed_payloads_are_each_stored_or_dead_lettered(
    gateway: object, gateway_settings: object, mqtt_url: str, topic_prefix: str
) -> None:
    url = gateway_settings.database_url.get_secret_value()  # type: ignore[attr-defined]
    rng = random.Random(20261123)
    valid = json.dumps(
        [{"ts": "2026-11-01T00:00:00+02:00", "values": {"1.8.0": 1.5, "32.7.0": 230}}]
    ).encode()
    payloads = [mutate(rng, valid) for _ in range(250)]
    payloads += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))) for _ in range(50)]
    topics = ["telemetry", "events", "status"]
    messages = [(f"{topic_prefix}meters/F{i}/{topics[i % 3]}", p) for i, p in enumerate(payloads)]
    async with MqttTestClient(mqtt_url) as client:
        await client.publish_all(messages)
    metrics = gateway.services.metrics  # type: ignore[attr-defined]
    total = lambda: sum(metrics.messages_received.labels(kind=k)._value.get() for k in topics)  # noqa: E731
    assert await wait_for_value(total, 300.0) == 300.0
    await asyncio.sleep(0.3)
    dead = db_scalar(url, "SELECT count(*) FROM dead_letters")
    accepted_meters = db_scalar(url, "SELECT count(*) FROM meters")
    # Each message either was dead-lettered or produced stored data that registered its meter.
    assert dead + accepted_meters == 300
    assert dead > 200
    async with MqttTestClient(mqtt_url) as client:
        await client.publish_all([(f"{topic_prefix}meters/OK/telemetry", valid)])
    assert (
        await wait_for_value(
            lambda: db_scalar(url, "SELECT count(*) FROM readings WHERE meter_id = 'OK'"), 2
        )
        == 2
    )


async def test_stop_while_the_database_is_down_leaves_data_to_the_broker(
    database_url: str,
    db_proxy: tuple[TcpProxy, str],
    private_broker: MosquittoProcess,
    topic_prefix: str,
) -> None:
    proxy, proxied = db_proxy
    settings = make_settings(proxied, private_broker.url, topic_prefix, shutdown_grace_s=1.0)
    async with gateway_running(settings) as gw:
        proxy.cut()
        async with MqttTestClient(private_broker.url) as client:
            await client.publish_all(numbered_messages(topic_prefix, 0, 20))
        await wait_for_value(lambda: gw.services.pipeline.pending_rows > 0, True)
        started = asyncio.get_running_loop().time()
    # gateway_running's exit has stopped it: within the grace period, not hung on the DB.
    assert asyncio.get_running_loop().time() - started < 10
    proxy.restore()
    # What it could not commit was never acknowledged: a new gateway gets it all.
    async with gateway_running(settings):
        await wait_stored(database_url, 20)
    assert_exactly(database_url, 20)


async def test_gateway_resubscribes_when_the_broker_lost_its_session(
    database_url: str, private_broker: MosquittoProcess, topic_prefix: str
) -> None:
    settings = make_settings(database_url, private_broker.url, topic_prefix)
    async with gateway_running(settings) as gw:
        async with MqttTestClient(private_broker.url) as client:
            await client.publish_all(numbered_messages(topic_prefix, 0, 10))
        await wait_stored(database_url, 10)
        intake = gw.services.mqtt
        private_broker.stop()
        (private_broker.directory / "mosquitto.db").unlink()  # the broker forgets every session
        assert await wait_for_value(intake.subscribed.is_set, False) is False
        private_broker.start()
        # Without a session nothing is queued for the gateway until it subscribes again.
        assert await wait_for_value(intake.subscribed.is_set, True) is True
        async with MqttTestClient(private_broker.url) as client:
            await client.publish_all(numbered_messages(topic_prefix, 10, 10))
        await wait_stored(database_url, 20)
    assert_exactly(database_url, 20)
