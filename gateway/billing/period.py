"""Billing periods: calendar months whose boundaries are local midnight in a meter's zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo

from protocols.errors import UsageError

__all__ = ["Period"]

_PERIOD: Final = re.compile(r"(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])")


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A billing month, written ``YYYY-MM``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not (1970 <= self.year <= 9998 and 1 <= self.month <= 12):
            raise UsageError(f"no billing period {self.year:04d}-{self.month:02d}")

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD.fullmatch(text.strip())
        if match is None:
            raise UsageError(f"billing period {text!r} is not YYYY-MM")
        return cls(int(match["year"]), int(match["month"]))

    @classmethod
    def ending_at(cls, boundary: datetime, time_zone: str) -> Period:
        """The period whose closing boundary is ``boundary`` (a local midnight on the 1st)."""
        local = boundary.astimezone(ZoneInfo(time_zone))
        return cls(local.year, local.month).previous()

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def opening(self, time_zone: str) -> datetime:
        """Local midnight starting the period, as a UTC instant."""
        local = datetime(self.year, self.month, 1, tzinfo=ZoneInfo(time_zone))
        return local.astimezone(UTC)

    def closing(self, time_zone: str) -> datetime:
        """Local midnight ending the period (the next period's opening), as a UTC instant."""
        return self.next().opening(time_zone)
