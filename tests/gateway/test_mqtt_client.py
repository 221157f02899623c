"""The gateway's MQTT client against a real Mosquitto: publish, leave, outages, TLS, credentials."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.dev.services import MosquittoProcess, free_port, port_answers
from gateway.errors import BrokerRefusedError
from gateway.mqtt import MqttClient, MqttOptions
from gateway.mqtt.events import MessageReceived
from tests.plugins.gateway import MqttTestClient


@contextlib.asynccontextmanager
async def running(options: MqttOptions) -> AsyncIterator[MqttClient]:
    client = MqttClient(options)
    task = asyncio.create_task(client.run(), name="mqtt-under-test")
    try:
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)


def options(port: int, **extra: Any) -> MqttOptions:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "client_id": f"client-test-{uuid.uuid4().hex[:8]}",
        "filters": (),
        "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5,
        "reconnect_jitter_s": 0.1,
    }
    values.update(extra)
    return MqttOptions(**values)


async def test_publish_returns_once_the_broker_acknowledged_and_the_subscriber_gets_it(
    mqtt_url: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}meters/M1/commands"
    port = int(mqtt_url.rsplit(":", 1)[1])
    async with MqttTestClient(mqtt_url, subscribe=[topic]) as listener:
        await asyncio.wait_for(listener.client.subscribed.wait(), 10)
        async with running(options(port)) as client:
            await asyncio.wait_for(client.connected.wait(), 10)
            await asyncio.wait_for(client.publish(topic, b'{"id":"c1"}'), 10)
            await asyncio.wait_for(client.publish(topic, b'{"id":"c2"}', qos=2), 10)
            for _ in range(100):
                if len(listener.received) == 2:
                    break
                await asyncio.sleep(0.05)
    assert listener.received == [(topic, b'{"id":"c1"}'), (topic, b'{"id":"c2"}')]


async def test_a_publish_made_while_the_broker_is_down_is_delivered_once_it_is_back(
    private_broker: MosquittoProcess, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}meters/M1/keypad"
    listener_id = f"listener-{uuid.uuid4().hex[:8]}"
    listener_opts = options(private_broker.port, client_id=listener_id, filters=(topic,))
    async with running(listener_opts) as listener:  # creates the listener's session
        await asyncio.wait_for(listener.subscribed.wait(), 10)
    async with running(options(private_broker.port)) as client:
        await asyncio.wait_for(client.connected.wait(), 10)
        private_broker.stop()
        publishing = asyncio.create_task(client.publish(topic, b"12345678901234567890"))
        await asyncio.sleep(0.5)
        assert not publishing.done()  # waits in the session, not failed, not dropped
        private_broker.start()
        await asyncio.wait_for(publishing, 30)
        assert client.connections == 2
    async with running(listener_opts) as listener:
        messages = await asyncio.wait_for(listener.receive(), 10)
        assert [(m.topic, m.payload) for m in messages] == [(topic, b"12345678901234567890")]
        listener.acknowledge(m.ack for m in messages if m.ack is not None)


async def test_acknowledgements_sent_just_before_leaving_count_though_the_broker_sends_on(
    private_broker: MosquittoProcess, topic_prefix: str
) -> None:
    """Every PUBACK sent before DISCONNECT counts, though the broker answers each with more.

    Each PUBACK frees a slot of our Receive Maximum, so the broker sends the next queued
    message at once, which may arrive after we have sent DISCONNECT. Here the broker is paused
    while the client acknowledges and leaves, so that it reads the PUBACKs only afterwards and
    sends into a connection the client has left. The next connection must get exactly the
    messages that were not acknowledged: none twice, none lost.
    """
    topic = f"{topic_prefix}meters/M1/telemetry"
    window = 20
    opts = options(
        private_broker.port,
        client_id=f"leaver-{uuid.uuid4().hex[:8]}",
        filters=(topic,),
        receive_maximum=window,
    )
    async with running(opts) as client:  # the session and its subscription
        await asyncio.wait_for(client.subscribed.wait(), 10)
    total = 200
    async with MqttTestClient(private_broker.url) as publisher:
        await publisher.publish_all((topic, b"%d" % n) for n in range(total))

    broker = private_broker.process
    assert broker is not None
    client = MqttClient(opts)
    task = asyncio.create_task(client.run(), name="leaver")
    first: list[MessageReceived] = []
    while len(first) < window:  # a full window: the broker now waits for our PUBACKs
        first += await asyncio.wait_for(client.receive(), 10)
    broker.send_signal(signal.SIGSTOP)
    try:
        assert client.acknowledge(m.ack for m in first if m.ack is not None) == len(first)
        leaving = asyncio.create_task(client.close())
        await asyncio.wait({leaving}, timeout=0.5)  # left, or waiting for the broker's close
    finally:
        broker.send_signal(signal.SIGCONT)
    await asyncio.wait_for(leaving, 10)
    await asyncio.wait_for(task, 10)

    acknowledged = {m.payload for m in first}
    expected = sorted({b"%d" % n for n in range(total)} - acknowledged)
    again: list[bytes] = []
    async with running(opts) as client:
        while True:  # until nothing more comes for a while
            try:
                messages = await asyncio.wait_for(client.receive(), 1.0)
            except TimeoutError:
                break
            again += [m.payload for m in messages]
            client.acknowledge(m.ack for m in messages if m.ack is not None)
    assert 0 < len(acknowledged) < total
    assert sorted(again) == expected, (
        f"acknowledged yet delivered again: {len(acknowledged.intersection(again))}"
    )


@dataclass
class SecureBroker:
    port: int
    ca: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    """Mosquitto with TLS only and a password file (user ``gateway``, password ``p@ss:w0rd``)."""
    cert, key, passwords = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "passwd"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["mosquitto_passwd", "-b", "-c", str(passwords), "gateway", "p@ss:w0rd"],
            check=True, capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl/mosquitto_passwd unavailable: {exc}")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        f"listener {port} 127.0.0.1\n"
        f"certfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
    )
    process = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while not port_answers("127.0.0.1", port, timeout=0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.skip("mosquitto with TLS did not start")
        time.sleep(0.05)
    yield SecureBroker(port, cert, process)
    process.terminate()
    process.wait(10)


async def test_tls_with_username_and_password(secure_broker: SecureBroker) -> None:
    context = ssl.create_default_context(cafile=str(secure_broker.ca))
    opts = options(
        secure_broker.port, tls=True, ssl_context=context, username="gateway", password="p@ss:w0rd"
    )
    async with running(opts) as client:
        await asyncio.wait_for(client.connected.wait(), 10)
        await asyncio.wait_for(client.publish("meters/M1/commands", b"x"), 10)


async def test_a_wrong_password_stops_the_client_with_the_reason_and_no_secret(
    secure_broker: SecureBroker, caplog: pytest.LogCaptureFixture
) -> None:
    context = ssl.create_default_context(cafile=str(secure_broker.ca))
    opts = options(
        secure_broker.port, tls=True, ssl_context=context, username="gateway", password="wr0ng!"
    )
    client = MqttClient(opts)
    with pytest.raises(BrokerRefusedError) as refused:
        await asyncio.wait_for(client.run(), 20)
    assert refused.value.permanent
    assert "wr0ng!" not in str(refused.value) and "wr0ng!" not in caplog.text


async def test_plain_tcp_to_a_tls_listener_is_retried_not_fatal(
    secure_broker: SecureBroker,
) -> None:
    client = MqttClient(options(secure_broker.port))
    task = asyncio.create_task(client.run())
    await asyncio.sleep(1.0)
    assert not task.done() and not client.connected.is_set()  # still retrying with back-off
    await client.close()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
