"""The MQTT 5 client session as a pure state machine: bytes and clock in, bytes and events out.

No sockets, no asyncio, no clock of its own (the shape of h11 over its codec). The ``mqtt5``
package encodes and decodes the packets; this module decides what they mean for the session:

* framing (:mod:`gateway.mqtt.framing`): the fixed header's Remaining Length says where a
  packet ends (MQTT 5 §2.1.4), so a packet is decoded only once it is complete;
* inbound QoS 1/2 messages, by packet id, until the application acknowledges them (§4.3, §4.4),
  counted against our Receive Maximum (§3.3.4). A broker that sends more is counted, not
  disconnected (Mosquitto 2.0.11 does, after a reconnect, and dropping the connection for it
  would only bring the whole window back again);
* our own QoS 1/2 publishes, until PUBACK / PUBCOMP, held by :mod:`gateway.mqtt.outbound`:
  packet ids, waiting under the server's Receive Maximum, resending with DUP after a reconnect
  to a session the broker kept (§4.4);
* the connection generation: every CONNECT starts a new one, and an acknowledgement carrying
  an older generation is dropped, because packet ids are reused by the next connection;
* keepalive (§3.1.2.10): when a PINGREQ is due, and when a silent server counts as gone.

Its configuration and its events are in :mod:`gateway.mqtt.events`.

::

    session.connect(now)            -> CONNECT bytes (new generation)
    session.receive_data(data, now) -> [ConnectionAccepted | SubscriptionsGranted
                                        | MessageReceived | PublishCompleted | ServerDisconnected]
    session.acknowledge(tokens)     -> PUBACK / PUBREC queued for the current connection
    session.publish(...)            -> a reference; its PublishCompleted event comes later
    session.tick(now)               -> seconds until the next tick; PINGREQ queued when due
    session.data_to_send()          -> everything queued, to write to the socket
    session.disconnect(now)         -> DISCONNECT queued; what the broker still sends is dropped
    session.connection_lost()       -> the socket is gone; in-flight publishes kept for resend
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

import mqtt5

from gateway.errors import BrokerRefusedError, KeepaliveTimeoutError, MqttProtocolError
from gateway.ingest.work import AckToken
from gateway.mqtt.events import (
    MAX_PACKET_ID,
    ConnectionAccepted,
    Event,
    MessageReceived,
    PublishCompleted,
    ServerDisconnected,
    SessionConfig,
    SubscriptionsGranted,
)
from gateway.mqtt.framing import frame_length
from gateway.mqtt.outbound import OutboundPublishes

__all__ = ["Session"]

_PERMANENT_REFUSALS = frozenset(
    # The codec's enums are not hashable: keep their integer values.
    int(code)
    for code in (
        mqtt5.ConnAckReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
        mqtt5.ConnAckReasonCode.CLIENT_ID_NOT_VALID,
        mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD,
        mqtt5.ConnAckReasonCode.NOT_AUTHORIZED,
        mqtt5.ConnAckReasonCode.BANNED,
        mqtt5.ConnAckReasonCode.BAD_AUTHENTICATION_METHOD,
    )
)


class _Stage(Enum):
    CLOSED = "closed"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    LEAVING = "leaving"
    """DISCONNECT sent; the broker closes the connection once it has read it (§3.14.4)."""


class Session:
    """One client's MQTT 5 session, across the network connections that carry it."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.generation = 0
        """Bumped by every :meth:`connect`; acknowledgement tokens carry it."""
        self._stage = _Stage.CLOSED
        self._out: list[bytes] = []
        self._partial: list[bytes] = []
        self._partial_len = 0
        self._need: int | None = None
        # Inbound QoS 1/2 messages of this connection not yet acknowledged (PUBACK/PUBREC), and
        # QoS 2 messages acknowledged with PUBREC whose PUBREL has not come (session state).
        self._unacked: dict[int, int] = {}
        self._released_wait: set[int] = set()
        # QoS 1 ids the broker reused before our PUBACK: id -> [deliveries, committed].
        self._reused: dict[int, list[int]] = {}
        # Our publishes go out through _send like everything else, so they count for keepalive.
        self._publishes = OutboundPublishes(self._send)
        self._keepalive_s = float(config.keepalive_s)
        self._last_sent = 0.0
        self._ping_sent_at: float | None = None
        self.receive_maximum_exceeded = 0
        """Messages the broker sent beyond our Receive Maximum (§3.3.4), since the start."""
        self.packet_ids_reused = 0
        """QoS 1 messages that arrived under an id we had not yet acknowledged."""

    # ------------------------------------------------------------------------- properties

    @property
    def connected(self) -> bool:
        return self._stage is _Stage.CONNECTED

    @property
    def inbound_unacknowledged(self) -> int:
        """Inbound QoS 1/2 messages counted against our Receive Maximum."""
        extra = sum(deliveries - 1 for deliveries, _ in self._reused.values())
        return len(self._unacked) + len(self._released_wait) + extra

    @property
    def outbound_in_flight(self) -> int:
        return self._publishes.in_flight

    @property
    def outbound_pending(self) -> int:
        """Our publishes not yet completed (in flight or waiting for a free slot)."""
        return self._publishes.pending

    # ------------------------------------------------------------------------- connection

    def connect(self, now: float) -> None:
        """Start a new connection: queue CONNECT; everything else waits for CONNACK."""
        self.generation += 1
        self._stage = _Stage.CONNECTING
        self._out.clear()
        self._partial.clear()
        self._partial_len, self._need = 0, None
        self._unacked.clear()  # un-acknowledged messages come again on the new connection
        self._reused.clear()
        self._ping_sent_at = None
        self._publishes.subscribe_id = None
        cfg = self.config
        self._send(
            mqtt5.ConnectPacket(
                cfg.client_id,
                username=cfg.username,
                password=cfg.password.encode() if cfg.password is not None else None,
                clean_start=False,
                keep_alive=cfg.keepalive_s,
                session_expiry_interval=cfg.session_expiry_s,
                receive_max=cfg.receive_maximum,
            ).write(),
            now,
        )

    def connection_lost(self) -> None:
        """The network connection ended; a later :meth:`connect` resumes the session."""
        self._stage = _Stage.CLOSED
        self._unacked.clear()
        self._reused.clear()
        self._out.clear()
        self._ping_sent_at = None

    def disconnect(self, now: float) -> bool:
        """Queue a normal DISCONNECT; the broker keeps the session (and queues for it).

        Returns True when a DISCONNECT was queued. The connection should then stay open until
        the broker closes it: it reads whatever we sent before the DISCONNECT (our last
        PUBACKs) only as long as the connection is not reset. Whatever the broker still sends
        meanwhile is dropped by :meth:`receive_data`, neither delivered nor acknowledged, so
        the broker keeps it for the next connection.
        """
        if self._stage is _Stage.CONNECTED:
            self._send(mqtt5.DisconnectPacket().write(), now)
            self._stage = _Stage.LEAVING
            return True
        self._stage = _Stage.CLOSED
        return False

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    def _send(self, data: bytes, now: float) -> None:
        self._out.append(data)
        self._last_sent = now

    # ------------------------------------------------------------------------- keepalive

    def tick(self, now: float) -> float:
        """Queue a PINGREQ when one is due; return seconds until the next call.

        Raises ``KeepaliveTimeoutError`` when a PINGREQ went unanswered for a keepalive interval.
        Reading never stops, so a PINGRESP is seen even while the application is not taking
        messages (the database is down): the connection outlives the outage.
        """
        interval = self._keepalive_s
        if self._stage is not _Stage.CONNECTED or interval <= 0:
            return 1.0
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= interval:
                raise KeepaliveTimeoutError(f"no PINGRESP within {interval:.0f} s")
            return self._ping_sent_at + interval - now
        # Ping at half the interval since we last sent anything: the broker counts 1.5 × keepalive.
        due = self._last_sent + interval / 2
        if now >= due:
            self._send(mqtt5.PingReqPacket().write(), now)
            self._ping_sent_at = now
            return interval
        return due - now

    # ------------------------------------------------------------------------- inbound

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes read from the socket; returns what they meant, in order."""
        if self._stage is _Stage.LEAVING:
            # Each of our last PUBACKs freed a slot of our Receive Maximum, and the broker
            # sends the next message into it until it reads our DISCONNECT: not taken.
            return []
        if self._need is not None and self._partial_len + len(data) < self._need:
            self._partial.append(data)  # a large packet still arriving: no re-joining per read
            self._partial_len += len(data)
            return []
        if self._partial:
            self._partial.append(data)
            data = b"".join(self._partial)
            self._partial.clear()
        self._partial_len, self._need = 0, None
        events: list[Event] = []
        view = memoryview(data)
        pos, end = 0, len(data)
        try:
            while pos < end:
                length = frame_length(view, pos)
                if length is None or pos + length > end:
                    self._need = length
                    rest = bytes(view[pos:])
                    self._partial.append(rest)
                    self._partial_len = len(rest)
                    break
                try:
                    packet, used = mqtt5.read(view[pos : pos + length])
                except (ValueError, IndexError) as exc:
                    raise MqttProtocolError(f"malformed packet from the broker: {exc}") from exc
                if used != length:
                    raise MqttProtocolError("packet length disagrees with its Remaining Length")
                header = view[pos]
                pos += length
                if header >> 4 == 3:  # PUBLISH, the hot path: QoS and RETAIN from the header
                    event = self._on_publish(packet, (header >> 1) & 3, bool(header & 1), now)  # type: ignore[arg-type]
                else:
                    event = self._handle(packet, now)
                if event is not None:
                    events.append(event)
        finally:
            view.release()
        return events

    def _handle(self, packet: mqtt5.Packet, now: float) -> Event | None:
        self._ping_sent_at = None  # any packet shows the broker alive
        match packet:
            case mqtt5.PubAckPacket():
                return self._completed(self._publishes.on_puback(packet), now)
            case mqtt5.PubRecPacket():
                return self._completed(self._publishes.on_pubrec(packet, now), now)
            case mqtt5.PubCompPacket():
                return self._completed(self._publishes.on_pubcomp(packet), now)
            case mqtt5.PubRelPacket():
                self._released_wait.discard(packet.packet_id)
                self._send(mqtt5.PubCompPacket(packet.packet_id).write(), now)
                return None
            case mqtt5.ConnAckPacket():
                return self._on_connack(packet, now)
            case mqtt5.SubAckPacket():
                return self._on_suback(packet)
            case mqtt5.PingRespPacket():
                return None
            case mqtt5.PublishPacket():
                return self._on_publish(packet, int(packet.qos), packet.retain, now)
            case mqtt5.DisconnectPacket():
                self._stage = _Stage.CLOSED
                return ServerDisconnected(int(packet.reason_code), packet.reason_code.name)
            case _:
                raise MqttProtocolError(f"unexpected {type(packet).__name__} from the broker")

    def _on_publish(
        self, packet: mqtt5.PublishPacket, qos: int, retain: bool, now: float
    ) -> Event | None:
        self._ping_sent_at = None
        if self._stage is not _Stage.CONNECTED:
            raise MqttProtocolError("PUBLISH before CONNACK")
        if qos == 0:
            return MessageReceived(packet.topic, packet.payload, 0, retain, None)
        packet_id = packet.packet_id
        if packet_id is None:
            raise MqttProtocolError("QoS 1/2 PUBLISH without a packet id")
        unacked = self._unacked
        if qos == 2 and packet_id in self._released_wait:
            # QoS 2 resent before our PUBREC reached the broker: already delivered and stored.
            self._send(mqtt5.PubRecPacket(packet_id).write(), now)
            return None
        if len(unacked) + len(self._released_wait) >= self.config.receive_maximum:
            self.receive_maximum_exceeded += 1
        held = unacked.get(packet_id)
        if held is not None:
            if held == 2 or qos == 2:
                return None  # a QoS 2 resend: delivered once, whatever the DUP flag says
            # A QoS 1 id reused before our PUBACK: a broker sending beyond our Receive Maximum
            # wraps its ids (Mosquitto 2.0.11 does). It is another message (§4.3.2); since a
            # PUBACK for this id could then release either, none goes out until every message
            # delivered under it is committed.
            self.packet_ids_reused += 1
            self._reused.setdefault(packet_id, [1, 0])[0] += 1
        else:
            unacked[packet_id] = qos
        token = AckToken(self.generation, packet_id, qos)
        return MessageReceived(packet.topic, packet.payload, qos, retain, token)

    def acknowledge(self, tokens: Iterable[AckToken], now: float) -> int:
        """Queue PUBACK (QoS 1) / PUBREC (QoS 2) for committed messages; returns how many.

        Tokens of an earlier connection are dropped: the broker redelivers those messages on
        this connection under ids that may now name other messages, and that copy is
        acknowledged when it commits.
        """
        if self._stage is not _Stage.CONNECTED:
            return 0
        generation, unacked, sent = self.generation, self._unacked, 0
        out = self._out
        for token in tokens:
            mid = token.mid
            if token.connection != generation or mid not in unacked:
                continue
            if token.qos == 2:
                del unacked[mid]
                out.append(mqtt5.PubRecPacket(mid).write())
                self._released_wait.add(mid)
                sent += 1
                continue
            reused = self._reused.get(mid)
            if reused is None:
                del unacked[mid]
                out.append(mqtt5.PubAckPacket(mid).write())
                sent += 1
                continue
            reused[1] += 1
            if reused[1] >= reused[0]:  # every message under this id is committed
                del unacked[mid], self._reused[mid]
                out.extend([mqtt5.PubAckPacket(mid).write()] * reused[0])
                sent += reused[0]
        if sent:
            self._last_sent = now
        return sent

    # ------------------------------------------------------------------------- connack/suback

    def _on_connack(self, packet: mqtt5.ConnAckPacket, now: float) -> Event:
        if self._stage is not _Stage.CONNECTING:
            raise MqttProtocolError("CONNACK outside of connecting")
        if packet.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            self._stage = _Stage.CLOSED
            raise BrokerRefusedError(
                packet.reason_code.name,
                int(packet.reason_code),
                permanent=int(packet.reason_code) in _PERMANENT_REFUSALS,
                detail=packet.reason_str,
            )
        self._stage = _Stage.CONNECTED
        self._publishes.server_receive_max = packet.receive_max or MAX_PACKET_ID
        if packet.server_keep_alive is not None:
            self._keepalive_s = float(packet.server_keep_alive)
        if not packet.session_present:
            # The broker has no state for us: QoS 2 releases it owed are gone with it, and our
            # publishes in flight must go out again as new messages.
            self._released_wait.clear()
        self._publishes.resend(session_present=packet.session_present, now=now)
        self._subscribe(now)
        return ConnectionAccepted(packet.session_present, self.generation)

    def _subscribe(self, now: float) -> None:
        # On every connection: a broker that lost the session would otherwise send nothing.
        # Retain handling 1 replays retained messages only for subscriptions new to the session.
        filters = [
            mqtt5.TopicFilter(
                f,
                max_qos=mqtt5.QoS.EXACTLY_ONCE,
                retain_handling=mqtt5.RetainHandling.SEND_IF_SUBSCRIPTION_NOT_EXISTS,
            )
            for f in self.config.filters
        ]
        if not filters:
            return
        packet_id = self._publishes.allocate_packet_id()
        self._publishes.subscribe_id = packet_id
        self._send(mqtt5.SubscribePacket(packet_id, filters).write(), now)

    def _on_suback(self, packet: mqtt5.SubAckPacket) -> Event:
        if packet.packet_id != self._publishes.subscribe_id:
            raise MqttProtocolError("SUBACK for a SUBSCRIBE we did not send")
        self._publishes.subscribe_id = None
        pairs = list(zip(self.config.filters, packet.reason_codes, strict=False))
        granted = tuple(f for f, code in pairs if int(code) < 0x80)
        refused = tuple((f, code.name) for f, code in pairs if int(code) >= 0x80)
        return SubscriptionsGranted(granted, refused)

    # ------------------------------------------------------------------------- outbound

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, now: float
    ) -> int:
        """Queue a QoS 1/2 publish; returns its reference (see :class:`PublishCompleted`).

        It is sent now if connected and the server's Receive Maximum allows, else as soon as
        it does; it stays in the session (and is resent with DUP after a reconnect) until the
        broker acknowledges it.
        """
        ref = self._publishes.add(topic, payload, qos=qos, retain=retain)
        if self._stage is _Stage.CONNECTED:
            self._publishes.send_queued(now)
        return ref

    def cancel(self, ref: int) -> bool:
        """Forget a publish not yet sent; False once it is in flight (then it completes)."""
        return self._publishes.cancel(ref)

    def _completed(self, event: PublishCompleted | None, now: float) -> Event | None:
        # A completed publish frees a slot under the server's Receive Maximum for the next.
        if event is not None and self._stage is _Stage.CONNECTED:
            self._publishes.send_queued(now)
        return event
