"""Any topic and any bytes give the consumer work to store, never an exception."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.consumer import decode_message
from protocols import CHANNELS, Topics

TOPICS = Topics("site/")
NOW = datetime(2026, 11, 23, tzinfo=UTC)

topic_strategy = st.one_of(
    st.text(max_size=80),
    st.builds(
        "site/meters/{}/{}".format,
        st.text(max_size=70),
        st.sampled_from(["telemetry", "events", "status", "commands", "keypad", "x"]),
    ),
    st.builds(
        "site/concentrators/{}/telemetry".format, st.from_regex(r"[A-Za-z0-9]{1,8}", fullmatch=True)
    ),
)
payload_strategy = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"MG\x01" + b),
    st.from_regex(rb'\A[\[{"0-9a-z:,. \]}-]{0,120}\Z'),
)


@settings(max_examples=500)
@given(topic_strategy, payload_strategy)
def test_every_message_yields_data_or_a_dead_letter(topic: str, payload: bytes) -> None:
    work = decode_message(TOPICS, topic, payload, now=NOW)
    produced = bool(work.readings) or bool(work.events) or work.status is not None
    assert produced != (work.dead is not None)
    if work.dead is not None:
        assert work.dead.payload == payload and work.dead.reason
        # Text that PostgreSQL can store: NUL (never valid in MQTT topics) is escaped.
        assert work.dead.topic == topic.replace("\x00", "\\x00")[:1024]
        assert "\x00" not in work.dead.detail
    assert all(r.channel in CHANNELS for r in work.readings)
