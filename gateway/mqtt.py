"""MQTT intake: a persistent MQTT 5 session whose QoS 1 messages are acknowledged after commit.

Built on gmqtt because it lets the application decide when a PUBACK goes out: with
``optimistic_acknowledgement=False`` the PUBACK is sent when the async ``on_message`` handler
returns, and our handler returns only when the message's batch has committed. A crash before
that leaves the message un-acknowledged and the broker redelivers it to the persistent session.
The client's Receive Maximum bounds how many un-acknowledged messages the broker sends us, which
is what turns a slow database into backpressure held at the broker.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, PubAckReasonCode

from gateway.errors import BrokerError

__all__ = ["MqttIntake", "MqttOptions"]

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class MqttOptions:
    host: str
    port: int
    client_id: str
    filters: Sequence[str]
    tls: bool = False
    username: str | None = None
    password: str | None = None
    session_expiry_s: int = 7 * 86400
    receive_maximum: int = 2000
    keepalive_s: int = 30


class MqttIntake:
    """Owns the gmqtt client; ``handler`` is awaited per message before its PUBACK."""

    def __init__(self, options: MqttOptions, handler: Handler) -> None:
        self._options = options
        self._handler = handler
        self._client: gmqtt.Client | None = None
        self.connected = asyncio.Event()

    async def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        del client, qos, properties
        await self._handler(topic, payload)
        return int(PubAckReasonCode.SUCCESS)

    def _on_connect(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        del client, rc, properties
        log.info("connected to MQTT broker", extra={"session_present": bool(flags)})
        self.connected.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        del client, packet
        if self.connected.is_set():
            log.warning("disconnected from MQTT broker; reconnecting", extra={"error": str(exc)})
        self.connected.clear()

    async def connect(self, *, attempts: int | None = None, delay_s: float = 0.5) -> None:
        """Connect and subscribe, retrying with backoff (forever unless ``attempts`` is set)."""
        opts = self._options
        client = gmqtt.Client(
            opts.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=opts.session_expiry_s,
            receive_maximum=opts.receive_maximum,
        )
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        # gmqtt retries reconnects itself once connected; delays in seconds.
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        if opts.username:
            client.set_auth_credentials(opts.username, opts.password)
        context = ssl.create_default_context() if opts.tls else False
        tried = 0
        while True:
            tried += 1
            try:
                await client.connect(
                    opts.host, opts.port, ssl=context, keepalive=opts.keepalive_s, version=MQTTv50
                )
                break
            except (OSError, gmqtt.mqtt.handler.MQTTConnectError) as exc:
                if attempts is not None and tried >= attempts:
                    raise BrokerError(
                        f"cannot connect to MQTT broker {opts.host}:{opts.port}: {exc}"
                    ) from exc
                log.warning(
                    "MQTT broker %s:%s unavailable (%s); retrying", opts.host, opts.port, exc
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
        self._client = client
        client.subscribe([gmqtt.Subscription(f, qos=1) for f in opts.filters])

    async def disconnect(self) -> None:
        if self._client is not None:
            await self._client.disconnect()
            self._client = None
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if self._client is None:
            raise BrokerError("not connected to the MQTT broker")
        self._client.publish(topic, payload, qos=qos, retain=retain)
