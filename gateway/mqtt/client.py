"""The asyncio shell around :class:`~gateway.mqtt.session.Session`: socket, keepalive, reconnects.

:class:`MqttClient` owns one TCP (or TLS) connection at a time and feeds what it reads into the
pure session, writing back whatever the session queued. It never stops reading the socket: the
number of messages the broker may have un-acknowledged to us is bounded by our Receive Maximum,
so memory is bounded without starving keepalive. The application

* takes received messages with :meth:`MqttClient.receive` (all that arrived, in order),
* acknowledges them with :meth:`MqttClient.acknowledge` once their data is committed (tokens
  from an earlier connection are dropped by the session), and
* publishes with :meth:`MqttClient.publish`, which returns once the broker acknowledged the
  message (PUBACK, or PUBCOMP for QoS 2); across reconnects the message stays in the session
  and is resent with DUP.

Connecting retries with exponential back-off and jitter (``stamina``), so that a fleet of
gateways behind one shared subscription does not reconnect in lockstep after a broker restart.
A refusal that retrying cannot fix (bad credentials, not authorised) stops :meth:`run` with
:class:`~gateway.errors.BrokerRefusedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import stamina

from gateway.errors import (
    BrokerError,
    BrokerRefusedError,
    ConnectionLostError,
    KeepaliveTimeoutError,
    MqttProtocolError,
    PublishRefusedError,
)
from gateway.ingest.work import AckToken
from gateway.mqtt.events import (
    ConnectionAccepted,
    Event,
    MessageReceived,
    PublishCompleted,
    ServerDisconnected,
    SessionConfig,
    SubscriptionsGranted,
)
from gateway.mqtt.session import Session

__all__ = ["MqttClient", "MqttOptions"]

log = logging.getLogger(__name__)

_LEAVE_TIMEOUT_S = 5.0
"""How long :meth:`MqttClient.close` waits for the broker to close after our DISCONNECT."""


@dataclass(frozen=True, slots=True)
class MqttOptions:
    host: str
    port: int
    client_id: str
    filters: Sequence[str]
    tls: bool = False
    ssl_context: ssl.SSLContext | None = None
    """With ``tls``: the context to use (default: the system's trusted CAs, hostname checked)."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    session_expiry_s: int = 7 * 86400
    receive_maximum: int = 20_000
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    reconnect_jitter_s: float = 2.0
    """Up to this much random delay is added to every back-off step."""


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, BrokerRefusedError):
        return not exc.permanent
    return isinstance(exc, OSError | TimeoutError | BrokerError)


class _Protocol(asyncio.Protocol):
    """Hands socket events to the client, tagged with the connection they belong to."""

    def __init__(self, client: MqttClient) -> None:
        self._client = client
        self.transport: asyncio.Transport | None = None
        self.accepted: asyncio.Future[ConnectionAccepted] = (
            asyncio.get_running_loop().create_future()
        )
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._client._on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._on_lost(self, exc)


class MqttClient:
    """A persistent MQTT 5 session with application-controlled acknowledgements."""

    def __init__(self, options: MqttOptions) -> None:
        self._options = options
        self._session = Session(
            SessionConfig(
                client_id=options.client_id,
                filters=tuple(options.filters),
                receive_maximum=options.receive_maximum,
                keepalive_s=options.keepalive_s,
                session_expiry_s=options.session_expiry_s,
                username=options.username,
                password=options.password,
            )
        )
        self._protocol: _Protocol | None = None
        self._inbox: deque[MessageReceived] = deque()
        self._has_messages = asyncio.Event()
        self._publishes: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._closing = False
        self._run_task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        """Set once the broker granted every subscription of the current connection."""
        self.connections = 0
        self._excess_logged = 0
        self._reuse_logged = False
        """Connections established so far (1 means no reconnect happened)."""

    @property
    def generation(self) -> int:
        return self._session.generation

    @property
    def inbound_unacknowledged(self) -> int:
        return self._session.inbound_unacknowledged

    # --------------------------------------------------------------------- application API

    async def receive(self) -> list[MessageReceived]:
        """Wait for messages; return every one received so far, in order of arrival."""
        while not self._inbox:
            self._has_messages.clear()
            await self._has_messages.wait()
        batch = list(self._inbox)
        self._inbox.clear()
        return batch

    def acknowledge(self, tokens: Iterable[AckToken]) -> int:
        """Acknowledge committed messages of the current connection; returns how many."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return 0
        sent = self._session.acknowledge(tokens, asyncio.get_running_loop().time())
        self._flush()
        return sent

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait for the broker's acknowledgement (PUBACK, or PUBCOMP for QoS 2).

        While disconnected the message waits in the session and goes out on the next
        connection; a message already sent is resent with DUP after a reconnect. Raises
        ``PublishRefusedError`` for a failure reason code and ``ConnectionLostError`` when the
        client is closed first. Cancelling the wait withdraws a message not yet sent; one
        already sent still completes in the session (the receiver must dedupe, as for any
        QoS 1 message).
        """
        if self._closing:
            raise ConnectionLostError("the MQTT client is closed")
        loop = asyncio.get_running_loop()
        ref = self._session.publish(topic, payload, qos=qos, retain=retain, now=loop.time())
        done: asyncio.Future[None] = loop.create_future()
        self._publishes[ref] = (topic, done)
        self._flush()
        try:
            await done
        except asyncio.CancelledError:
            self._publishes.pop(ref, None)
            self._session.cancel(ref)
            raise

    async def close(self) -> None:
        """Leave the broker (normal DISCONNECT: the session and its queue stay there).

        After DISCONNECT the client half-closes and goes on reading until the broker closes
        the connection (MQTT 5 §3.14.4), dropping what still arrives. Closing the socket at
        once would lose acknowledgements: each PUBACK sent just before frees a slot of our
        Receive Maximum, and the broker answers it with the next queued message; arriving at
        a closed socket, that message is answered with a TCP reset, and the broker drops the
        connection without reading the PUBACKs still queued ahead of the DISCONNECT, so the
        messages they acknowledged come again to the next connection.
        """
        self._closing = True
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            transport = protocol.transport
            if self._session.disconnect(asyncio.get_running_loop().time()):
                self._flush()
                if transport.can_write_eof():  # TCP: FIN after the DISCONNECT; TLS cannot
                    transport.write_eof()
            else:
                transport.close()  # never connected: nothing to acknowledge
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(protocol.lost.wait(), _LEAVE_TIMEOUT_S)
            if not protocol.lost.is_set():
                transport.abort()
        elif self._run_task is not None and not self._run_task.done():
            self._run_task.cancel()  # still trying to connect
        for _, done in self._publishes.values():
            if not done.done():
                done.set_exception(ConnectionLostError("the MQTT client closed before the PUBACK"))
        self._publishes.clear()

    # --------------------------------------------------------------------- connection loop

    async def run(self) -> None:
        """Connect, serve the connection, reconnect with back-off; return after :meth:`close`."""
        self._run_task = asyncio.current_task()
        opts = self._options
        while not self._closing:
            failures = 0
            async for attempt in stamina.retry_context(
                on=lambda exc: not self._closing and _retryable(exc),
                attempts=None,
                timeout=None,
                wait_initial=opts.reconnect_initial_s,
                wait_max=opts.reconnect_max_s,
                wait_jitter=opts.reconnect_jitter_s,
            ):
                with attempt:
                    try:
                        protocol = await self._connect_once()
                    except Exception as exc:
                        if self._closing:
                            return  # closed while connecting: nothing to retry
                        if failures == 0:
                            log.warning(
                                "MQTT broker %s:%s unavailable (%s); retrying with back-off",
                                opts.host,
                                opts.port,
                                exc,
                            )
                        failures += 1
                        raise
            if failures:
                log.info("connected to MQTT broker after %d failed attempts", failures)
            await self._serve(protocol)
            if not self._closing:
                log.warning("connection to MQTT broker lost; reconnecting")

    async def _connect_once(self) -> _Protocol:
        opts = self._options
        loop = asyncio.get_running_loop()
        context = (opts.ssl_context or ssl.create_default_context()) if opts.tls else None
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(opts.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self),
                    opts.host,
                    opts.port,
                    ssl=context,
                    server_hostname=opts.host if context else None,
                )
                self._protocol = protocol
                self._session.connect(loop.time())
                self._flush()
                accepted = await protocol.accepted
        except BaseException:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()
            raise
        self.connections += 1
        self.connected.set()
        log.info(
            "connected to MQTT broker",
            extra={"session_present": accepted.session_present, "generation": accepted.generation},
        )
        if not accepted.session_present and self.connections > 1:
            log.warning("the broker had lost the gateway's session; subscribing again")
        return protocol

    async def _serve(self, protocol: _Protocol) -> None:
        """Keepalive for one connection; returns when it is gone."""
        loop = asyncio.get_running_loop()
        while not protocol.lost.is_set():
            try:
                delay = self._session.tick(loop.time())
            except KeepaliveTimeoutError as exc:
                log.warning("MQTT broker stopped answering: %s", exc)
                if protocol.transport is not None:
                    protocol.transport.abort()
                await protocol.lost.wait()
                break
            self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(protocol.lost.wait(), max(delay, 0.05))

    # --------------------------------------------------------------------- protocol events

    def _flush(self) -> None:
        protocol = self._protocol
        data = self._session.data_to_send()
        if data and protocol is not None and protocol.transport is not None:
            protocol.transport.write(data)

    def _on_data(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return  # a superseded connection's last bytes
        try:
            events = self._session.receive_data(data, asyncio.get_running_loop().time())
        except (MqttProtocolError, BrokerRefusedError) as exc:
            if not protocol.accepted.done():
                protocol.accepted.set_exception(exc)
            else:
                log.error("closing the MQTT connection: %s", exc)
            if protocol.transport is not None:
                protocol.transport.abort()
            return
        for event in events:
            self._route(protocol, event)
        self._flush()
        if self._session.receive_maximum_exceeded > self._excess_logged:
            if self._excess_logged == 0:
                log.warning(
                    "the broker sends more un-acknowledged messages than our Receive Maximum"
                    " (%d); counting them, logged once",
                    self._options.receive_maximum,
                )
            self._excess_logged = self._session.receive_maximum_exceeded
        if self._session.packet_ids_reused and not self._reuse_logged:
            self._reuse_logged = True
            log.warning(
                "the broker reuses packet ids of messages not yet acknowledged; their"
                " acknowledgements wait until every message under the id is committed"
            )

    def _route(self, protocol: _Protocol, event: Event) -> None:
        match event:
            case MessageReceived():
                self._inbox.append(event)
                self._has_messages.set()
            case PublishCompleted(ref=ref):
                topic, done = self._publishes.pop(ref, ("", None))
                if done is not None and not done.done():
                    if event.ok:
                        done.set_result(None)
                    else:
                        done.set_exception(
                            PublishRefusedError(topic, event.reason_code, event.reason)
                        )
            case ConnectionAccepted():
                if not protocol.accepted.done():
                    protocol.accepted.set_result(event)
            case SubscriptionsGranted(refused=refused):
                if refused:
                    log.error("the broker refused subscriptions: %s", refused)
                else:
                    self.subscribed.set()
            case ServerDisconnected(reason=reason):
                log.warning("the MQTT broker disconnected us: %s", reason)
                if protocol.transport is not None:
                    protocol.transport.close()

    def _on_lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        protocol.lost.set()
        if not protocol.accepted.done():
            protocol.accepted.set_exception(
                ConnectionLostError(
                    f"connection closed before CONNACK: {exc or 'closed by the broker'}"
                )
            )
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._session.connection_lost()
        self.connected.clear()
        self.subscribed.clear()
        # Messages not yet taken are un-acknowledged: the broker sends them again on the next
        # connection, where they get tokens that can be acknowledged.
        kept = [m for m in self._inbox if m.ack is None]
        self._inbox.clear()
        self._inbox.extend(kept)
