"""What the MQTT 5 session is given and what it reports: its configuration and its events.

:class:`SessionConfig` holds what every CONNECT and SUBSCRIBE of one client says. The events
are what :meth:`~gateway.mqtt.session.Session.receive_data` returns, in the order the broker's
packets meant them::

    ConnectionAccepted    CONNACK with success; whether the broker still had our session
    SubscriptionsGranted  SUBACK: the filters granted and those refused, with the reason
    MessageReceived       PUBLISH; QoS 1/2 carry the token to acknowledge after commit
    PublishCompleted      PUBACK / PUBREC refusal / PUBCOMP ending one of our publishes
    ServerDisconnected    DISCONNECT from the broker
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.ingest.work import AckToken

__all__ = [
    "ConnectionAccepted",
    "Event",
    "MessageReceived",
    "PublishCompleted",
    "ServerDisconnected",
    "SessionConfig",
    "SubscriptionsGranted",
]

MAX_PACKET_ID = 0xFFFF
"""The largest Two Byte Integer (§1.5.2): packet ids, Receive Maximum and keepalive."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    client_id: str
    filters: Sequence[str]
    """Topic filters subscribed at QoS 2 maximum on every connection (``$share/…`` allowed)."""
    receive_maximum: int = 20_000
    """Inbound QoS 1/2 messages the broker may have un-acknowledged to us (1..65535)."""
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86400
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.receive_maximum <= MAX_PACKET_ID:
            raise ValueError("receive_maximum must be within 1..65535 (MQTT 5 §3.1.2.11.3)")
        if not 0 <= self.keepalive_s <= MAX_PACKET_ID:
            raise ValueError("keepalive_s must be within 0..65535 (MQTT 5 §3.1.2.10)")


@dataclass(frozen=True, slots=True)
class ConnectionAccepted:
    session_present: bool
    """False: the broker had no session for us (first start, expiry, lost persistence)."""
    generation: int


@dataclass(frozen=True, slots=True)
class SubscriptionsGranted:
    granted: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    """(filter, reason) for each filter the broker refused."""


@dataclass(frozen=True, slots=True)
class MessageReceived:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    ack: AckToken | None
    """None for QoS 0; otherwise hand it back to :meth:`Session.acknowledge` after commit."""


@dataclass(frozen=True, slots=True)
class PublishCompleted:
    ref: int
    """The reference :meth:`Session.publish` returned."""
    reason_code: int
    """0 (or 16, no matching subscribers) is success; ≥ 0x80 is a refusal."""
    reason: str

    @property
    def ok(self) -> bool:
        return self.reason_code < 0x80


@dataclass(frozen=True, slots=True)
class ServerDisconnected:
    reason_code: int
    reason: str


Event = (
    ConnectionAccepted
    | SubscriptionsGranted
    | MessageReceived
    | PublishCompleted
    | ServerDisconnected
)
