"""Device timestamps (docs/protocol.md §3): RFC 3339 text or epoch milliseconds → UTC.

Meters often report local time, with or without DST, so the UTC instant is kept alongside the
raw text whenever the device did not write UTC itself. A time written without an offset is read
in the meter's registered zone (the caller passes it in: this module does no I/O). Around a DST
change such a time may name two instants (the repeated hour) or none (the skipped hour); the
rule, the same as PostgreSQL's ``timestamp AT TIME ZONE``, is to take the *later* of the two
candidate instants: the second occurrence of a repeated hour, and for a skipped hour the offset
in force before the change (02:30 on a spring-forward night in Berlin is 01:30Z, as 03:30
CEST). The raw text is always kept, so a reading can be re-interpreted later.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from protocols.errors import PayloadError

__all__ = ["EARLIEST", "MAX_FUTURE", "local_to_utc", "parse_device_time", "to_rfc3339"]

EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Readings stamped before this are treated as a meter with a reset clock."""
MAX_FUTURE: Final = timedelta(hours=24)
"""How far ahead of the gateway's clock a device may be before its time is called absurd."""

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?P<tz>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)


def local_to_utc(naive: datetime, zone: tzinfo) -> datetime:
    """The UTC instant of wall-clock time ``naive`` in ``zone`` (the later one when ambiguous)."""
    if zone is UTC:
        return naive.replace(tzinfo=UTC)
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return max(first, second)


def parse_device_time(
    value: object, *, now: datetime, naive_tz: tzinfo = UTC, plausible: bool = True
) -> tuple[datetime, str | None]:
    """Return ``(utc_instant, raw_text_or_None)`` for a device ``ts`` field.

    ``raw`` is the device's own text when it was not already UTC (a non-zero offset, or no
    offset at all, read in ``naive_tz``). Raises PayloadError with reason ``missing_timestamp``,
    ``bad_timestamp`` or ``absurd_timestamp`` (the last only when ``plausible`` asks for the
    range check: a reading's time must be plausible, a status's is informative).
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
        if parsed.tzinfo is None or zone not in ("Z", "z", "+00:00"):
            raw = value
        try:
            instant = (
                local_to_utc(parsed, naive_tz) if parsed.tzinfo is None else parsed.astimezone(UTC)
            )
        except OverflowError:  # year 1 or 9999 pushed past the calendar by the offset
            raise PayloadError("absurd_timestamp", f"'ts' {value[:40]!r} out of range") from None
    else:
        raise PayloadError("bad_timestamp", "'ts' must be RFC 3339 text or epoch milliseconds")
    if plausible and (instant < EARLIEST or instant > now + MAX_FUTURE):
        raise PayloadError("absurd_timestamp", f"'ts' {instant.isoformat()} is implausible")
    return instant, raw


def to_rfc3339(instant: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with millisecond precision (``…Z``)."""
    if instant.tzinfo is None:
        raise PayloadError("bad_timestamp", "naive datetime given where UTC is required")
    text = instant.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
