"""The pure MQTT 5 session: packets in and out as bytes, clock as plain numbers (no sockets).

The broker's side of each exchange is written with the ``mqtt5`` codec, and what the session
sends is decoded with it, so each test reads as the packet exchange of the MQTT 5 standard.
"""

from __future__ import annotations

import mqtt5
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import BrokerRefusedError, KeepaliveTimeoutError, MqttProtocolError
from gateway.ingest.work import AckToken
from gateway.mqtt.events import (
    ConnectionAccepted,
    MessageReceived,
    PublishCompleted,
    ServerDisconnected,
    SessionConfig,
    SubscriptionsGranted,
)
from gateway.mqtt.framing import frame_length
from gateway.mqtt.session import Session

EVENT_TYPES = (
    ConnectionAccepted,
    SubscriptionsGranted,
    MessageReceived,
    PublishCompleted,
    ServerDisconnected,
)
Q1, Q2 = mqtt5.QoS.AT_LEAST_ONCE, mqtt5.QoS.EXACTLY_ONCE
FILTERS = ("$share/ingest/meters/+/telemetry", "meters/+/status")


def sent(session: Session) -> list[mqtt5.Packet]:
    """Decode everything the session queued for the socket."""
    data, packets, pos = session.data_to_send(), [], 0
    while pos < len(data):
        packet, used = mqtt5.read(memoryview(data)[pos:])
        packets.append(packet)
        pos += used
    return packets


def connected(
    *,
    receive_maximum: int = 10,
    server_receive_max: int = 65535,
    session_present: bool = False,
    session: Session | None = None,
    now: float = 0.0,
) -> Session:
    """A session through CONNECT/CONNACK and SUBSCRIBE/SUBACK, with its output drained."""
    session = session or Session(
        SessionConfig(
            client_id="gw-1",
            filters=FILTERS,
            receive_maximum=receive_maximum,
            keepalive_s=30,
            session_expiry_s=3600,
            username="gw",
            password="s3cret",
        )
    )
    session.connect(now)
    session.data_to_send()
    connack = mqtt5.ConnAckPacket(session_present=session_present, receive_max=server_receive_max)
    [event] = session.receive_data(connack.write(), now)
    assert event == ConnectionAccepted(session_present, session.generation)
    subscribe = next(p for p in sent(session) if isinstance(p, mqtt5.SubscribePacket))
    suback = mqtt5.SubAckPacket(subscribe.packet_id, [mqtt5.SubAckReasonCode(1)] * 2)
    assert session.receive_data(suback.write(), now) == [SubscriptionsGranted(FILTERS, ())]
    return session


def publish(
    topic: str, packet_id: int | None, qos: mqtt5.QoS = Q1, payload: bytes = b"{}"
) -> bytes:
    return mqtt5.PublishPacket(topic, payload, qos=qos, packet_id=packet_id).write()


def test_connect_asks_for_a_persistent_session_with_our_receive_maximum() -> None:
    session = Session(
        SessionConfig(client_id="gw-1", filters=FILTERS, receive_maximum=500, session_expiry_s=60)
    )
    session.connect(0.0)
    [connect] = sent(session)
    assert isinstance(connect, mqtt5.ConnectPacket)
    assert (connect.client_id, connect.clean_start, connect.session_expiry_interval) == (
        "gw-1",
        False,
        60,
    )
    assert (connect.receive_max, connect.keep_alive) == (500, 30)


def test_connack_subscribes_every_filter_including_shared_groups() -> None:
    session = Session(SessionConfig(client_id="gw-1", filters=FILTERS))
    session.connect(0.0)
    session.data_to_send()
    session.receive_data(mqtt5.ConnAckPacket(session_present=True).write(), 0.0)
    [subscribe] = sent(session)
    assert isinstance(subscribe, mqtt5.SubscribePacket)
    assert [f.pattern for f in subscribe.topic_filters] == list(FILTERS)
    # Retained messages are replayed only for subscriptions new to the session.
    assert {int(f.retain_handling) for f in subscribe.topic_filters} == {1}


def test_a_refused_subscription_is_reported_with_its_filter() -> None:
    session = Session(SessionConfig(client_id="gw-1", filters=FILTERS))
    session.connect(0.0)
    session.data_to_send()
    session.receive_data(mqtt5.ConnAckPacket().write(), 0.0)
    [subscribe] = sent(session)
    codes = [mqtt5.SubAckReasonCode(1), mqtt5.SubAckReasonCode.NOT_AUTHORIZED]
    [event] = session.receive_data(mqtt5.SubAckPacket(subscribe.packet_id, codes).write(), 0.0)
    assert event == SubscriptionsGranted((FILTERS[0],), ((FILTERS[1], "NOT_AUTHORIZED"),))


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD, True),
        (mqtt5.ConnAckReasonCode.NOT_AUTHORIZED, True),
        (mqtt5.ConnAckReasonCode.SERVER_BUSY, False),
    ],
)
def test_a_refused_connection_says_whether_retrying_can_help(
    code: mqtt5.ConnAckReasonCode, permanent: bool
) -> None:
    session = Session(SessionConfig(client_id="gw-1", filters=FILTERS, password="s3cret"))
    session.connect(0.0)
    with pytest.raises(BrokerRefusedError) as refused:
        session.receive_data(mqtt5.ConnAckPacket(reason_code=code).write(), 0.0)
    assert refused.value.permanent is permanent
    assert "s3cret" not in str(refused.value)


def test_qos1_is_acknowledged_only_when_the_application_says_so() -> None:
    session = connected()
    [message] = session.receive_data(publish("meters/A/telemetry", 7), 1.0)
    assert isinstance(message, MessageReceived)
    assert message.ack == AckToken(session.generation, 7, 1)
    assert sent(session) == [] and session.inbound_unacknowledged == 1
    assert session.acknowledge([message.ack], 2.0) == 1
    [puback] = sent(session)
    assert isinstance(puback, mqtt5.PubAckPacket) and puback.packet_id == 7
    assert session.acknowledge([message.ack], 2.0) == 0  # never twice
    assert sent(session) == [] and session.inbound_unacknowledged == 0


def test_an_acknowledgement_from_an_earlier_connection_is_dropped() -> None:
    session = connected()
    [old] = session.receive_data(publish("meters/A/telemetry", 7), 1.0)
    session.connection_lost()
    connected(session=session, session_present=True)
    # The broker resends it under the same id; a different message could have that id too.
    [new] = session.receive_data(publish("meters/B/telemetry", 7), 2.0)
    assert isinstance(old, MessageReceived) and isinstance(new, MessageReceived)
    assert old.ack is not None and new.ack is not None
    assert session.acknowledge([old.ack], 3.0) == 0 and sent(session) == []
    assert session.acknowledge([new.ack], 3.0) == 1
    assert [p.packet_id for p in sent(session)] == [7]  # type: ignore[union-attr]


def test_a_broker_exceeding_our_receive_maximum_is_counted_and_still_delivered() -> None:
    session = connected(receive_maximum=2)
    session.receive_data(publish("t", 1) + publish("t", 2), 1.0)
    assert session.receive_maximum_exceeded == 0
    [message] = session.receive_data(publish("t", 3), 1.0)
    assert isinstance(message, MessageReceived) and message.ack is not None
    assert session.receive_maximum_exceeded == 1 and session.inbound_unacknowledged == 3


def test_a_qos1_id_reused_before_our_puback_is_another_message_acknowledged_after_both() -> None:
    """A broker beyond our Receive Maximum wraps its packet ids (seen with Mosquitto 2.0.11)."""
    session = connected()
    [first] = session.receive_data(publish("meters/A/telemetry", 5), 1.0)
    [second] = session.receive_data(publish("meters/B/telemetry", 5), 1.0)
    assert isinstance(first, MessageReceived) and isinstance(second, MessageReceived)
    assert (first.topic, second.topic) == ("meters/A/telemetry", "meters/B/telemetry")
    assert first.ack is not None and second.ack is not None
    assert session.packet_ids_reused == 1
    # A PUBACK for id 5 could release either at the broker: none until both are committed.
    assert session.acknowledge([first.ack], 2.0) == 0 and sent(session) == []
    assert session.acknowledge([second.ack], 2.0) == 2
    assert [(type(p), p.packet_id) for p in sent(session)] == [(mqtt5.PubAckPacket, 5)] * 2  # type: ignore[union-attr]
    assert session.inbound_unacknowledged == 0


def test_qos2_inbound_exactly_once() -> None:
    session = connected()
    [message] = session.receive_data(publish("t", 9, Q2), 1.0)
    assert isinstance(message, MessageReceived) and message.ack is not None
    session.acknowledge([message.ack], 1.0)
    [pubrec] = sent(session)
    assert isinstance(pubrec, mqtt5.PubRecPacket) and pubrec.packet_id == 9
    # The broker resends before seeing our PUBREC: answered again, not delivered again.
    assert session.receive_data(publish("t", 9, Q2), 1.0) == []
    assert isinstance(sent(session)[0], mqtt5.PubRecPacket)
    assert session.inbound_unacknowledged == 1  # still counted until PUBREL/PUBCOMP
    assert session.receive_data(mqtt5.PubRelPacket(9).write(), 1.0) == []
    [pubcomp] = sent(session)
    assert isinstance(pubcomp, mqtt5.PubCompPacket) and pubcomp.packet_id == 9
    assert session.inbound_unacknowledged == 0


def test_what_the_broker_sends_after_our_disconnect_is_neither_taken_nor_acknowledged() -> None:
    """The connection stays open after DISCONNECT until the broker closes it (§3.14.4).

    Each PUBACK frees a slot of our Receive Maximum, and the broker fills it before it reads
    the DISCONNECT behind; that message waits at the broker for the next connection.
    """
    session = connected()
    [message] = session.receive_data(publish("t", 1), 1.0)
    assert isinstance(message, MessageReceived) and message.ack is not None
    assert session.acknowledge([message.ack], 2.0) == 1
    session.disconnect(2.0)
    assert [(type(p), getattr(p, "packet_id", None)) for p in sent(session)] == [
        (mqtt5.PubAckPacket, 1),
        (mqtt5.DisconnectPacket, None),
    ]
    late = publish("t", 2) + publish("t", 3, Q2) + mqtt5.PingRespPacket().write()
    assert session.receive_data(late, 2.1) == []
    assert sent(session) == [] and not session.connected
    session.connection_lost()
    connected(session=session, session_present=True)  # the session goes on
    [again] = session.receive_data(publish("t", 2), 3.0)
    assert isinstance(again, MessageReceived) and again.ack is not None
    assert session.acknowledge([again.ack], 3.0) == 1


def test_leaving_before_connack_sends_no_disconnect() -> None:
    session = Session(SessionConfig(client_id="gw-1", filters=FILTERS))
    session.connect(0.0)
    session.data_to_send()
    assert session.disconnect(1.0) is False and sent(session) == []


def test_qos0_needs_no_acknowledgement() -> None:
    session = connected()
    [message] = session.receive_data(publish("t", None, mqtt5.QoS.AT_MOST_ONCE), 1.0)
    assert isinstance(message, MessageReceived) and message.ack is None


def test_outbound_qos1_respects_the_servers_receive_maximum_and_completes_in_order() -> None:
    session = connected(server_receive_max=2)
    refs = [session.publish(f"meters/M/commands/{i}", b"x", now=1.0) for i in range(3)]
    first, second = sent(session)
    assert isinstance(first, mqtt5.PublishPacket) and isinstance(second, mqtt5.PublishPacket)
    assert (first.topic, int(first.qos), first.duplicate) == ("meters/M/commands/0", 1, False)
    assert session.outbound_in_flight == 2 and session.outbound_pending == 3
    [done] = session.receive_data(mqtt5.PubAckPacket(first.packet_id).write(), 2.0)
    assert done == PublishCompleted(refs[0], 0, "SUCCESS") and done.ok
    [third] = sent(session)  # a slot was freed
    assert isinstance(third, mqtt5.PublishPacket) and third.topic == "meters/M/commands/2"


def test_a_refused_publish_completes_with_its_reason() -> None:
    session = connected()
    ref = session.publish("meters/M/keypad", b"x", now=1.0)
    [packet] = sent(session)
    refusal = mqtt5.PubAckPacket(
        packet.packet_id,  # type: ignore[union-attr]
        reason_code=mqtt5.PubAckReasonCode.NOT_AUTHORIZED,
    )
    [done] = session.receive_data(refusal.write(), 1.0)
    assert done == PublishCompleted(ref, 0x87, "NOT_AUTHORIZED") and not done.ok


def test_unacknowledged_publishes_are_resent_with_dup_to_a_kept_session() -> None:
    session = Session(SessionConfig(client_id="gw-1", filters=FILTERS))
    session.publish("meters/M/commands", b"queued while offline", now=0.0)
    connected(session=session)  # sent once connected
    session.connection_lost()
    session.connect(5.0)
    session.data_to_send()
    session.receive_data(mqtt5.ConnAckPacket(session_present=True).write(), 5.0)
    resent = [p for p in sent(session) if isinstance(p, mqtt5.PublishPacket)]
    assert [(p.topic, p.duplicate) for p in resent] == [("meters/M/commands", True)]


def test_a_session_the_broker_lost_gets_our_publishes_again_as_new_messages() -> None:
    session = connected()
    session.publish("meters/M/commands", b"x", now=1.0)
    sent(session)
    session.connection_lost()
    session.connect(5.0)
    session.data_to_send()
    session.receive_data(mqtt5.ConnAckPacket(session_present=False).write(), 5.0)
    resent = [p for p in sent(session) if isinstance(p, mqtt5.PublishPacket)]
    assert [(p.topic, p.duplicate) for p in resent] == [("meters/M/commands", False)]


def test_outbound_qos2_releases_after_pubrec_and_resends_pubrel_after_reconnect() -> None:
    session = connected()
    ref = session.publish("meters/M/commands", b"x", qos=2, now=1.0)
    [packet] = sent(session)
    pid = packet.packet_id  # type: ignore[union-attr]
    assert session.receive_data(mqtt5.PubRecPacket(pid).write(), 1.0) == []
    assert [type(p) for p in sent(session)] == [mqtt5.PubRelPacket]
    session.connection_lost()
    session.connect(2.0)
    session.data_to_send()
    session.receive_data(mqtt5.ConnAckPacket(session_present=True).write(), 2.0)
    assert mqtt5.PubRelPacket in [type(p) for p in sent(session)]
    [done] = session.receive_data(mqtt5.PubCompPacket(pid).write(), 3.0)
    assert done == PublishCompleted(ref, 0, "SUCCESS")


def test_keepalive_pings_when_idle_and_times_out_without_an_answer() -> None:
    session = connected(now=100.0)
    assert session.tick(105.0) == pytest.approx(10.0)  # half the 30 s interval after CONNECT
    assert sent(session) == []
    session.tick(115.0)
    assert [type(p) for p in sent(session)] == [mqtt5.PingReqPacket]
    session.receive_data(mqtt5.PingRespPacket().write(), 116.0)
    session.tick(131.0)
    assert [type(p) for p in sent(session)] == [mqtt5.PingReqPacket]
    with pytest.raises(KeepaliveTimeoutError):
        session.tick(161.0)  # no answer for a whole interval


def test_keepalive_goes_on_while_the_application_takes_nothing() -> None:
    """A database outage: messages arrive and wait, unacknowledged; the pings go on."""
    session = connected(receive_maximum=3, now=0.0)
    session.receive_data(publish("t", 1) + publish("t", 2) + publish("t", 3), 1.0)
    for minute in range(1, 6):
        now = minute * 60.0
        session.tick(now)
        assert [type(p) for p in sent(session)] == [mqtt5.PingReqPacket]
        session.receive_data(mqtt5.PingRespPacket().write(), now + 0.1)
    assert session.inbound_unacknowledged == 3


def test_packets_split_anywhere_decode_the_same() -> None:
    session = connected()
    data = b"".join(publish(f"meters/M{i}/telemetry", i + 1, payload=b"x" * i) for i in range(5))
    events = []
    for i in range(len(data)):
        events += session.receive_data(data[i : i + 1], 1.0)
    assert [e.topic for e in events] == [f"meters/M{i}/telemetry" for i in range(5)]  # type: ignore[union-attr]


def test_frame_length_reads_the_variable_byte_integer() -> None:
    assert frame_length(b"\x30\x00") == 2
    assert frame_length(b"\x30\x80\x01") == 3 + 128
    assert frame_length(b"\x30\x80") is None
    with pytest.raises(MqttProtocolError):
        frame_length(b"\x30\xff\xff\xff\xff\x01")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_from_the_broker_give_events_or_a_protocol_error(data: bytes) -> None:
    session = connected()
    try:
        events = session.receive_data(data, 1.0)
    except MqttProtocolError:
        return  # the client closes the connection; nothing else may escape
    assert all(isinstance(e, EVENT_TYPES) for e in events)
