"""The project's single error tree.

Every error raised on purpose by the gateway, the token engine, the protocol codecs or the
simulated firmware derives from :class:`MeteringError`::

    MeteringError
    ├── ProtocolError             a peer (meter, concentrator, vendor) sent something invalid
    │   ├── PayloadError          telemetry/event payload that cannot be decoded or validated
    │   └── TopicError            an MQTT topic outside the device protocol
    ├── TokenError                tokens/: see tokens.errors for its subtree
    ├── UsageError                we called something wrongly (programming or configuration error)
    └── GatewayError              gateway/: see gateway.errors for its subtree

"The peer sent garbage" (``ProtocolError``, ``TokenError``'s input errors) is kept apart from
"we misused it" (``UsageError``) so that the ingest path can dead-letter the first and crash
loudly on the second.

This module is pure: it imports nothing from the rest of the project.
"""

from __future__ import annotations

__all__ = [
    "MeteringError",
    "PayloadError",
    "ProtocolError",
    "TopicError",
    "UsageError",
]


class MeteringError(Exception):
    """Root of every deliberate error in the project."""


class UsageError(MeteringError):
    """An API of the project was called with arguments that can never be valid."""


class ProtocolError(MeteringError):
    """A peer sent data that violates the device or vendor protocol."""


class PayloadError(ProtocolError):
    """A message body could not be decoded or failed validation.

    ``reason`` is a short machine-readable code (``bad_json``, ``unknown_channel`` ...)
    stored with dead-lettered messages; the message text is for humans.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TopicError(ProtocolError):
    """An MQTT topic that the device protocol does not define."""
