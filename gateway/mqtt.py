"""MQTT intake: a persistent MQTT 5 session whose QoS 1/2 messages are acknowledged after commit.

Acknowledgement is application-controlled: the PUBACK (QoS 1) or PUBREC (QoS 2) of a message is
sent only once the batch holding its data has committed. A crash before that leaves the message
un-acknowledged and the broker redelivers it to the persistent session; storage is idempotent,
so a redelivery is stored once.

gmqtt is the client because it lets the application decide when acknowledgements go out
(``optimistic_acknowledgement=False``). Its public way of doing so runs one task per message and
sends the PUBACK when that task ends, which halves its message rate (measured: ~62 k msg/s with
a plain callback, ~31 k msg/s with a task per message, on this machine). This module therefore
hooks the two per-QoS entry points of gmqtt's package handler (pinned to gmqtt 0.8.x, checked by
:func:`_install_hooks`) to hand messages to a plain callback with an :class:`AckToken`, and sends
the acknowledgements itself after commit. An acknowledgement from an earlier connection is
dropped, not sent: packet ids restart with each connection, and a stale PUBACK could acknowledge
a different message that is not yet stored.

Backpressure: the client's Receive Maximum bounds un-acknowledged messages the broker sends us;
on top of that :meth:`MqttIntake.pause` stops reading the socket while the pipeline is full.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from gateway.errors import BrokerError
from gateway.ingest.work import AckToken

__all__ = ["MqttIntake", "MqttOptions", "Sink"]

log = logging.getLogger(__name__)

Sink = Callable[[str, bytes, AckToken | None], None]
"""Receives (topic, payload, ack token or None for QoS 0); must not block."""


@dataclass(frozen=True, slots=True)
class MqttOptions:
    host: str
    port: int
    client_id: str
    filters: Sequence[str]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    session_expiry_s: int = 7 * 86400
    receive_maximum: int = 20_000
    keepalive_s: int = 30


def _install_hooks(client: gmqtt.Client, on_publish: Callable[[str, bytes, int, int], None]) -> Any:
    """Route gmqtt's QoS 1/2 publish handling to ``on_publish(topic, payload, mid, qos)``."""
    handler = client._package_handler
    for name in (
        "_handle_qos_1_publish_packet",
        "_handle_qos_2_publish_packet",
        "_send_puback",
        "_send_pubrec",
    ):
        if not callable(getattr(handler, name, None)):
            raise BrokerError(f"unsupported gmqtt version: package handler lacks {name}")

    def qos1(mid: int, packet: bytes, topic: str, properties: Any) -> None:
        del properties
        on_publish(topic, packet, mid, 1)

    def qos2(mid: int, packet: bytes, topic: str, properties: Any) -> None:
        del properties
        on_publish(topic, packet, mid, 2)

    handler._handle_qos_1_publish_packet = qos1
    handler._handle_qos_2_publish_packet = qos2
    return handler


class MqttIntake:
    """Owns the gmqtt client; delivers every message to ``sink`` and acknowledges on request."""

    def __init__(self, options: MqttOptions, sink: Sink) -> None:
        self._options = options
        self._sink = sink
        self._client: gmqtt.Client | None = None
        self._handler: Any = None
        self._generation = 0
        self._paused = False
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        """Set once the broker has granted this connection's subscriptions (SUBACK)."""
        self.resume_paused: Callable[[], bool] | None = None
        """Tells, on a reconnect, whether intake must start paused (pipeline still full)."""

    def _on_publish(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self._sink(topic, payload, AckToken(self._generation, mid, qos))

    def _on_qos0(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> None:
        del client, qos, properties
        self._sink(topic, payload, None)

    def _on_connect(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        del rc, properties
        self._generation += 1
        self._paused = False
        # Subscribe on every connect: gmqtt does not, and a broker that lost the session (expiry,
        # no persistence) would otherwise deliver nothing. Retain handling 1 sends retained
        # messages only for subscriptions that are new to the session.
        client.subscribe(
            [gmqtt.Subscription(f, qos=1, retain_handling_options=1) for f in self._options.filters]
        )
        log.info("connected to MQTT broker", extra={"session_present": bool(flags)})
        self.connected.set()
        if self.resume_paused is not None and self.resume_paused():
            self.pause()  # the pipeline is still full: keep the new socket paused too

    def _on_subscribe(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        del client, mid, properties
        refused = [code for code in qos if code >= 0x80]
        if refused:
            log.error("the broker refused subscriptions: reason codes %s", refused)
            return
        self.subscribed.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        del client, packet
        self.subscribed.clear()
        self._generation += 1
        if self.connected.is_set() and self._client is not None:
            log.warning("disconnected from MQTT broker; reconnecting", extra={"error": str(exc)})
        self.connected.clear()

    def acknowledge(self, tokens: Iterable[AckToken]) -> int:
        """Acknowledge committed messages of the current connection; returns how many."""
        handler = self._handler
        if handler is None or not self.connected.is_set():
            return 0
        current, sent = self._generation, 0
        for token in tokens:
            if token.connection != current:
                continue  # the broker redelivers it on this connection; that copy gets the ack
            if token.qos == 1:
                handler._send_puback(token.mid)
            else:
                handler._send_pubrec(token.mid)
            sent += 1
        return sent

    def _transport(self) -> asyncio.Transport | None:
        connection = getattr(self._client, "_connection", None)
        transport = getattr(connection, "_transport", None)
        return transport if isinstance(transport, asyncio.Transport) else None

    def pause(self) -> None:
        """Stop reading from the broker (the pipeline is full); TCP pushes back on it."""
        transport = self._transport()
        if transport is not None and not self._paused:
            transport.pause_reading()
            self._paused = True

    def resume(self) -> None:
        transport = self._transport()
        if transport is not None and self._paused:
            transport.resume_reading()
        self._paused = False

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
        self._handler = _install_hooks(client, self._on_publish)
        client.on_message = self._on_qos0
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
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

    async def disconnect(self) -> None:
        client, self._client = self._client, None  # None first: this disconnect is deliberate
        if client is not None:
            await client.disconnect()
        self.connected.clear()
        self.subscribed.clear()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if self._client is None:
            raise BrokerError("not connected to the MQTT broker")
        self._client.publish(topic, payload, qos=qos, retain=retain)
