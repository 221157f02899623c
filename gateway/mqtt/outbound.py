"""Our own QoS 1/2 publishes in the MQTT 5 session, from submission until the broker's answer.

Part of the pure session (:mod:`gateway.mqtt.session`): no sockets, no asyncio, no clock of its
own. The session owns one :class:`OutboundPublishes` across the connections that carry it,
hands it the acknowledgements of our publishes, and lets waiting publishes go out only while
it is connected; the packets this class writes go out through the session.

* packet ids (§2.2.1): a publish takes a free id when it is sent and keeps it until PUBACK
  (QoS 1) or PUBREC then PUBCOMP (QoS 2, §4.3.3), or a PUBREC that refuses it; the session's
  pending SUBSCRIBE draws from the same ids, so none is taken twice;
* the server's Receive Maximum (§3.3.4): beyond it, publishes wait in order of submission;
* after a reconnect to a session the broker kept, what was in flight is resent with DUP (or
  its PUBREL, once the PUBREC came) before anything waiting (§4.4); to a new session, it all
  goes out again as new messages, first.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import mqtt5

from gateway.errors import MqttProtocolError
from gateway.mqtt.events import MAX_PACKET_ID, PublishCompleted

__all__ = ["OutboundPublishes"]


class _Await(Enum):
    """What an outbound publish in flight waits for."""

    QUEUED = "queued"
    PUBACK = "puback"
    PUBREC = "pubrec"
    PUBCOMP = "pubcomp"


@dataclass(slots=True)
class _Outbound:
    ref: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    waiting: _Await = _Await.QUEUED
    packet_id: int = 0


class OutboundPublishes:
    """Our publishes not yet completed: waiting for a free slot, or in flight under a packet id."""

    def __init__(self, send: Callable[[bytes, float], None]) -> None:
        self._send = send
        # In order of submission; those with a packet id are in flight.
        self._outbound: dict[int, _Outbound] = {}
        self._by_packet_id: dict[int, _Outbound] = {}
        self._queued: deque[_Outbound] = deque()
        self._refs = itertools.count(1)
        self._next_packet_id = 1
        self.server_receive_max = MAX_PACKET_ID
        """The Receive Maximum of the server's last CONNACK: our publishes in flight at most."""
        self.subscribe_id: int | None = None
        """The packet id of the session's SUBSCRIBE awaiting its SUBACK; no publish takes it."""

    @property
    def in_flight(self) -> int:
        return len(self._by_packet_id)

    @property
    def pending(self) -> int:
        """Our publishes not yet completed (in flight or waiting for a free slot)."""
        return len(self._outbound)

    def add(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> int:
        """Queue a QoS 1/2 publish behind those waiting; returns its reference.

        Nothing is sent here: the session calls :meth:`send_queued` while it is connected.
        """
        if qos not in (1, 2):
            raise ValueError("only QoS 1 and 2 publishes are tracked to completion")
        item = _Outbound(next(self._refs), topic, payload, qos, retain)
        self._outbound[item.ref] = item
        self._queued.append(item)
        return item.ref

    def cancel(self, ref: int) -> bool:
        """Forget a publish not yet sent; False once it is in flight (then it completes)."""
        item = self._outbound.get(ref)
        if item is None or item.waiting is not _Await.QUEUED:
            return False
        del self._outbound[ref]
        self._queued.remove(item)
        return True

    def send_queued(self, now: float) -> None:
        """Send waiting publishes, in order, as far as the server's Receive Maximum allows."""
        while self._queued and len(self._by_packet_id) < self.server_receive_max:
            item = self._queued.popleft()
            item.packet_id = self.allocate_packet_id()
            item.waiting = _Await.PUBACK if item.qos == 1 else _Await.PUBREC
            self._by_packet_id[item.packet_id] = item
            self._send(self._publish_bytes(item, duplicate=False), now)

    def _publish_bytes(self, item: _Outbound, *, duplicate: bool) -> bytes:
        return mqtt5.PublishPacket(
            item.topic,
            item.payload,
            qos=mqtt5.QoS(item.qos),
            retain=item.retain,
            packet_id=item.packet_id,
            duplicate=duplicate,
        ).write()

    def resend(self, *, session_present: bool, now: float) -> None:
        """After CONNACK: resend what was in flight (§4.4), then what was waiting."""
        in_flight = sorted(self._by_packet_id.values(), key=lambda i: i.ref)
        if not session_present:
            # A new session: nothing is in flight there; everything goes out again, first.
            self._by_packet_id.clear()
            for item in reversed(in_flight):
                item.waiting = _Await.QUEUED
                self._queued.appendleft(item)
        else:
            for item in in_flight:
                if item.waiting is _Await.PUBCOMP:
                    self._send(mqtt5.PubRelPacket(item.packet_id).write(), now)
                else:
                    self._send(self._publish_bytes(item, duplicate=True), now)
        self.send_queued(now)

    def on_puback(self, packet: mqtt5.PubAckPacket) -> PublishCompleted | None:
        return self._complete(packet.packet_id, _Await.PUBACK, packet.reason_code)

    def on_pubcomp(self, packet: mqtt5.PubCompPacket) -> PublishCompleted | None:
        return self._complete(packet.packet_id, _Await.PUBCOMP, packet.reason_code)

    def on_pubrec(self, packet: mqtt5.PubRecPacket, now: float) -> PublishCompleted | None:
        item = self._by_packet_id.get(packet.packet_id)
        if item is None or item.waiting not in (_Await.PUBREC, _Await.PUBCOMP):
            # Not ours (any more): answer so the broker can discard its state (§4.3.3).
            self._send(
                mqtt5.PubRelPacket(
                    packet.packet_id, reason_code=mqtt5.PubRelReasonCode.PACKET_ID_NOT_FOUND
                ).write(),
                now,
            )
            return None
        if int(packet.reason_code) >= 0x80:
            return self._finish(item, packet.reason_code)
        item.waiting = _Await.PUBCOMP
        self._send(mqtt5.PubRelPacket(packet.packet_id).write(), now)
        return None

    def _complete(
        self,
        packet_id: int,
        expected: _Await,
        code: mqtt5.PubAckReasonCode | mqtt5.PubCompReasonCode,
    ) -> PublishCompleted | None:
        item = self._by_packet_id.get(packet_id)
        if item is None or item.waiting is not expected:
            return None  # a late acknowledgement of something already completed
        return self._finish(item, code)

    def _finish(
        self,
        item: _Outbound,
        code: mqtt5.PubAckReasonCode | mqtt5.PubRecReasonCode | mqtt5.PubCompReasonCode,
    ) -> PublishCompleted:
        del self._by_packet_id[item.packet_id]
        del self._outbound[item.ref]
        return PublishCompleted(item.ref, int(code), code.name)

    def allocate_packet_id(self) -> int:
        """The next packet id not used by a publish in flight or the pending SUBSCRIBE."""
        for _ in range(MAX_PACKET_ID):
            candidate = self._next_packet_id
            self._next_packet_id = candidate % MAX_PACKET_ID + 1
            if candidate not in self._by_packet_id and candidate != self.subscribe_id:
                return candidate
        raise MqttProtocolError("no free packet id")  # unreachable: in flight ≤ receive max
