"""What the rules share: channel names, series helpers, and merging episodes of one kind.

Pure, no I/O. Register series become :class:`Interval`s (the advance between consecutive
readings, and whether readings are missing in between); :func:`runs` finds consecutive samples
meeting a condition; local-time helpers place a window in the meter's registered zone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.detection.model import Episode, Sample

__all__ = [
    "ACTIVE_POWER",
    "CUMULATIVE",
    "EXPORT_REGISTER",
    "IMPORT_REGISTER",
    "LITRES_PER_M3",
    "VOLTAGES",
    "WATER_FLOW",
    "WATER_REGISTER",
    "WATER_REVERSE",
    "Interval",
    "at_hour",
    "local_zone",
    "merge",
    "register_intervals",
    "runs",
]

WATER_REGISTER = "24.2.1"
WATER_REVERSE = "24.2.2"
WATER_FLOW = "water.flow"
IMPORT_REGISTER = "1.8.0"
EXPORT_REGISTER = "2.8.0"
ACTIVE_POWER = "1.7.0"
VOLTAGES = ("32.7.0", "52.7.0", "72.7.0")
CUMULATIVE = (IMPORT_REGISTER, EXPORT_REGISTER, WATER_REGISTER, WATER_REVERSE)
LITRES_PER_M3 = 1000.0


def merge(episodes: Iterable[Episode]) -> list[Episode]:
    """Episodes of one kind sorted by start, overlapping (or touching) ones merged."""
    out: list[Episode] = []
    for ep in sorted(episodes, key=lambda e: e.start):
        if out and (out[-1].end is None or ep.start <= out[-1].end):
            last = out[-1]
            end = None if last.end is None or ep.end is None else max(last.end, ep.end)
            out[-1] = Episode(last.kind, last.start, end, {**ep.evidence, **last.evidence})
        else:
            out.append(ep)
    return out


@dataclass(frozen=True, slots=True)
class Interval:
    start: datetime
    end: datetime
    amount: float
    """Register advance over the interval, in the rule's unit (negative when it went back)."""
    contiguous: bool
    """False when readings are missing between ``start`` and ``end``."""

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600.0

    def rate(self) -> float:
        return self.amount / self.hours if self.hours > 0 else 0.0


def register_intervals(
    samples: Sequence[Sample], interval_s: int, scale: float
) -> Iterator[Interval]:
    limit = timedelta(seconds=interval_s * 1.5)
    for a, b in itertools.pairwise(samples):
        yield Interval(a.ts, b.ts, (b.value - a.value) * scale, b.ts - a.ts <= limit)


def local_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def at_hour(day: datetime, hour: float, zone: ZoneInfo) -> datetime:
    whole = int(hour)
    minutes = round((hour - whole) * 60)
    return datetime.combine(day.date(), time(whole % 24, minutes), zone)


def runs(
    samples: Sequence[Sample], predicate: Any
) -> Iterator[tuple[Sequence[Sample], Sample | None]]:
    """Maximal runs of consecutive samples satisfying ``predicate``, each with the sample that
    ended it (None when the run reaches the end of the data)."""
    run: list[Sample] = []
    for sample in samples:
        if predicate(sample):
            run.append(sample)
        elif run:
            yield run, sample
            run = []
    if run:
        yield run, None
