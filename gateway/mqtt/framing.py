"""MQTT 5 framing: where a packet ends in the bytes read from the socket.

The fixed header's Remaining Length (§2.1.4), a Variable Byte Integer of one to four bytes
(§1.5.5), says how many bytes follow it, so the session decodes a packet only once all of it
has arrived, and a read that ends inside a packet is kept until the rest comes.
"""

from __future__ import annotations

from gateway.errors import MqttProtocolError

__all__ = ["frame_length"]


def frame_length(buffer: bytes | memoryview, start: int = 0) -> int | None:
    """Total length of the packet beginning at ``start`` (MQTT 5 §2.1.4), or None if incomplete.

    Raises :class:`MqttProtocolError` for a Remaining Length longer than four bytes.
    """
    value, shift, pos = 0, 0, start + 1
    end = len(buffer)
    while True:
        if pos >= end:
            return None
        byte = buffer[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return pos - start + value
        shift += 7
        if shift > 21:
            raise MqttProtocolError("malformed Remaining Length (more than four bytes)")
