"""Token identifiers (IEC 62055-41 §6.3.3, DOMAIN.md §2 "TID").

A TID is the number of whole minutes from the base date (1993-01-01, 2014-01-01 or 2035-01-01,
00:00 UTC) to the issue time, in 24 bits. It is computed on UTC wall-clock minutes: an aware
datetime is converted to UTC first, a naive one is taken to be UTC already, and no
DST-observing zone is ever involved. The 1993 base ran out on 2024-11-24 20:15 UTC.

A meter rejects a TID it has already accepted, so two tokens for one meter in the same minute
need distinct TIDs: :class:`TidAllocator` hands out strictly increasing TIDs per meter. It is a
pure in-memory object; whoever owns it decides how its state is persisted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Final

from tokens.errors import KeyParameterError, TidOutOfRangeError

__all__ = ["TID_LIMIT", "BaseDate", "TidAllocator", "datetime_from_tid", "tid_from_datetime"]

TID_LIMIT: Final = 1 << 24
"""TIDs are 0 .. TID_LIMIT - 1."""
_MINUTE: Final = timedelta(minutes=1)


class BaseDate(IntEnum):
    """The three STS base dates, named by year."""

    Y1993 = 1993
    Y2014 = 2014
    Y2035 = 2035

    @property
    def epoch(self) -> datetime:
        """Midnight UTC on 1 January of the base year."""
        return datetime(int(self), 1, 1, tzinfo=UTC)

    @property
    def code(self) -> str:
        """The two-digit code used by DKGA04 ("93", "14", "35")."""
        return f"{int(self) % 100:02d}"

    @classmethod
    def parse(cls, value: object) -> BaseDate:
        """Accept 1993/2014/2035, "93"/"14"/"35", or an ISO date "1993-01-01"."""
        if isinstance(value, BaseDate):
            return value
        if isinstance(value, str):
            text = value.strip()
        elif isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            raise KeyParameterError("base date must be 1993, 2014 or 2035")
        for base in cls:
            if text in (str(int(base)), base.code, f"{int(base)}-01-01"):
                return base
        raise KeyParameterError("base date must be 1993, 2014 or 2035")


def _as_utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def tid_from_datetime(when: datetime, base: BaseDate) -> int:
    """Minutes from ``base`` to ``when`` (UTC), checked against the 24-bit range."""
    minutes = (_as_utc(when) - base.epoch) // _MINUTE
    if not 0 <= minutes < TID_LIMIT:
        raise TidOutOfRangeError(
            f"{when.isoformat()} is outside the TID range of base date {int(base)} "
            f"(minute {minutes}, allowed 0..{TID_LIMIT - 1})"
        )
    return minutes


def datetime_from_tid(tid: int, base: BaseDate) -> datetime:
    """The UTC minute a TID stands for."""
    if not 0 <= tid < TID_LIMIT:
        raise TidOutOfRangeError(f"TID {tid} is outside 0..{TID_LIMIT - 1}")
    return base.epoch + tid * _MINUTE


class TidAllocator:
    """Hands out strictly increasing TIDs per (meter, base date).

    ``allocate`` returns the TID of ``now`` unless that is not above the last TID handed out
    (or observed) for the meter, in which case it returns last + 1: several tokens issued in
    one minute get consecutive TIDs, running slightly ahead of the clock.
    """

    __slots__ = ("_last",)

    def __init__(self, last: dict[tuple[str, BaseDate], int] | None = None) -> None:
        self._last: dict[tuple[str, BaseDate], int] = dict(last or {})

    def allocate(self, meter_id: str, now: datetime, base: BaseDate) -> int:
        """The next TID for ``meter_id``: the minute of ``now`` or one above the last."""
        tid = tid_from_datetime(now, base)
        last = self._last.get((meter_id, base))
        if last is not None and tid <= last:
            tid = last + 1
            if tid >= TID_LIMIT:
                raise TidOutOfRangeError(
                    f"no TID left after {last} for this meter under base date {int(base)}"
                )
        self._last[(meter_id, base)] = tid
        return tid

    def observe(self, meter_id: str, tid: int, base: BaseDate) -> None:
        """Record an explicitly chosen TID so later allocations stay above it."""
        if not 0 <= tid < TID_LIMIT:
            raise TidOutOfRangeError(f"TID {tid} is outside 0..{TID_LIMIT - 1}")
        key = (meter_id, base)
        last = self._last.get(key)
        if last is None or tid > last:
            self._last[key] = tid

    def last(self, meter_id: str, base: BaseDate) -> int | None:
        """The highest TID handed out or observed for the meter, if any."""
        return self._last.get((meter_id, base))
