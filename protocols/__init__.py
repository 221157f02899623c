"""Pure codecs of the device protocol (docs/protocol.md).

Nothing here performs I/O: functions take bytes and values and return values, so the gateway,
the simulated firmware and the tests share one definition of every message.
"""

from protocols.binary import BinaryRow, decode_frame, encode_frame, is_binary
from protocols.channels import CHANNELS, Channel, ChannelKind
from protocols.commands import (
    Command,
    CommandAction,
    CommandReply,
    RejectReason,
    check_command,
    decode_command,
    decode_reply,
    sign_command,
)
from protocols.errors import MeteringError, PayloadError, ProtocolError, TopicError, UsageError
from protocols.events import Event, EventType, decode_events, encode_events
from protocols.status import OFFLINE_WILL, Status, decode_status, encode_status
from protocols.telemetry import Instant, Quality, Reading, decode_json_telemetry, encode_json
from protocols.timestamps import parse_device_time, to_rfc3339
from protocols.topics import ParsedTopic, TopicKind, Topics, validate_meter_id

__all__ = [
    "CHANNELS",
    "OFFLINE_WILL",
    "BinaryRow",
    "Channel",
    "ChannelKind",
    "Command",
    "CommandAction",
    "CommandReply",
    "Event",
    "EventType",
    "Instant",
    "MeteringError",
    "ParsedTopic",
    "PayloadError",
    "ProtocolError",
    "Quality",
    "Reading",
    "RejectReason",
    "Status",
    "TopicError",
    "TopicKind",
    "Topics",
    "UsageError",
    "check_command",
    "decode_command",
    "decode_events",
    "decode_frame",
    "decode_json_telemetry",
    "decode_reply",
    "decode_status",
    "encode_events",
    "encode_frame",
    "encode_json",
    "encode_status",
    "is_binary",
    "parse_device_time",
    "sign_command",
    "to_rfc3339",
    "validate_meter_id",
]
