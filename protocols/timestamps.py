"""Device timestamps (docs/protocol.md §3): RFC 3339 text or epoch milliseconds → UTC.

Meters often report local time, with or without DST, so the UTC instant is kept alongside the
raw text whenever the device did not write UTC itself.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from protocols.errors import PayloadError

__all__ = ["EARLIEST", "MAX_FUTURE", "parse_device_time", "to_rfc3339"]

EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Readings stamped before this are treated as a meter with a reset clock."""
MAX_FUTURE: Final = timedelta(hours=24)
"""How far ahead of the gateway's clock a device may be before its time is called absurd."""

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?P<tz>[Zz]|[+-]\d{2}:\d{2})?"
)


def parse_device_time(
    value: object, *, now: datetime, naive_tz: tzinfo = UTC
) -> tuple[datetime, str | None]:
    """Return ``(utc_instant, raw_text_or_None)`` for a device ``ts`` field.

    ``raw`` is the device's own text when it was not already UTC (a non-zero offset, or no
    offset at all, read in ``naive_tz``). Raises PayloadError with reason ``missing_timestamp``,
    ``bad_timestamp`` or ``absurd_timestamp``.
    """
    raw: str | None = None
    if value is None:
        raise PayloadError("missing_timestamp", "reading has no 'ts'")
    if isinstance(value, bool):
        raise PayloadError("bad_timestamp", "'ts' must be RFC 3339 text or epoch milliseconds")
    if isinstance(value, int):
        try:
            # fromtimestamp (C) is twice as fast as adding a timedelta; ms survive the float.
            instant = datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise PayloadError("absurd_timestamp", f"epoch ms {value} out of range") from None
    elif isinstance(value, str):
        match = _RFC3339.fullmatch(value)
        if match is None:
            raise PayloadError("bad_timestamp", f"'ts' {value[:40]!r} is not RFC 3339")
        text = value
        if len(text) > 26 and "." in text:
            # datetime takes at most microseconds; drop extra fraction digits before the zone
            head, _, tail = text.partition(".")
            digits = len(tail) - len(tail.lstrip("0123456789"))
            text = f"{head}.{tail[: min(digits, 6)]}{tail[digits:]}"
        try:
            parsed = datetime.fromisoformat(text.upper().replace(" ", "T"))
        except ValueError:
            raise PayloadError(
                "bad_timestamp", f"'ts' {value[:40]!r} is not a valid time"
            ) from None
        zone = match.group("tz")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=naive_tz)
            raw = value
        elif zone not in ("Z", "z", "+00:00"):
            raw = value
        instant = parsed.astimezone(UTC)
    else:
        raise PayloadError("bad_timestamp", "'ts' must be RFC 3339 text or epoch milliseconds")
    if instant < EARLIEST or instant > now + MAX_FUTURE:
        raise PayloadError("absurd_timestamp", f"'ts' {instant.isoformat()} is implausible")
    return instant, raw


def to_rfc3339(instant: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with millisecond precision (``…Z``)."""
    if instant.tzinfo is None:
        raise PayloadError("bad_timestamp", "naive datetime given where UTC is required")
    text = instant.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
