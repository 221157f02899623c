"""Pure billing arithmetic: boundary reads, rollovers, interpolation, estimates, read checks.

Values in, values out; no I/O. Register values are floats because that is how they are stored
(``reading_data.value`` is double precision); exported figures are rounded once, at the edge,
to :data:`READ_QUANTUM` (see :func:`to_decimal`).

Boundary read rules (docs/billing.md):

1. a usable point exactly at the boundary: ``actual`` for meter telemetry, ``manual`` or
   ``customer`` for a person's read;
2. the nearest usable points on both sides within the interpolation window: ``interpolated``,
   linear in time, across a register rollover when there is one;
3. only a person's read on one side within the window: that read, as ``manual`` / ``customer``
   (read-date billing: a meter reader's round is not at midnight);
4. otherwise ``estimated`` from the meter's own average daily consumption, or ``unavailable``
   when the meter has no history to estimate from.

Rollovers: a register that falls from near its capacity (within ``margin`` of it) to near zero
wrapped; any other fall is a rollback. The capacity is the meter's registered ``register_max``,
else the next power of ten above the value, as the detection feature has it. Two margins: the
detection feature's narrow one between neighbouring readings (a period's series, the two points
an interpolation spans), and a wider one between reads further apart (a period's boundary reads,
a person's read and the point before it, the span a daily rate is taken over); a period's
boundary reads count as a wrap only if its series does not show the register going back instead
(:func:`period_consumption`). A fall by no more than the register's resolution is jitter, not a
fall: no consumption, and neither a wrap nor a rollback (detection's ``rollback_resolution``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from gateway.detection.model import Rules
from gateway.detection.rules.registers import register_capacity

__all__ = [
    "CLOCK_SKEW",
    "EARLIEST_READ_AT",
    "LATEST_READ_AT",
    "READ_QUANTUM",
    "BillingPolicy",
    "BoundaryRead",
    "EstimateMethod",
    "PeriodAdvance",
    "Point",
    "ReadMethod",
    "ReadSource",
    "SeriesFalls",
    "Verdict",
    "advance",
    "classify_drops",
    "consumption_between",
    "daily_rate",
    "estimate_value",
    "interpolate",
    "is_rollover",
    "period_consumption",
    "read_time_problem",
    "register_modulus",
    "resolve_boundary",
    "shift_months",
    "to_decimal",
    "validate_read",
]

READ_QUANTUM: Final = Decimal("0.001")
"""Exported reads and consumption: 3 decimals (1 Wh of kWh, 1 litre of m3)."""

CLOCK_SKEW: Final = timedelta(minutes=5)
"""How far ahead of the gateway's clock a read's time may be before it is in the future."""
EARLIEST_READ_AT: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_READ_AT: Final = datetime(3000, 1, 1, tzinfo=UTC)
"""A read's time lies in ``[EARLIEST_READ_AT, LATEST_READ_AT)``. Anything else is a mistake, and
far enough out PostgreSQL and Python no longer agree on the instant (a BC time in UTC)."""

_DAY_S: Final = 86400.0
_DETECTION: Final = Rules()


class ReadMethod(enum.StrEnum):
    """How a boundary read was obtained."""

    ACTUAL = "actual"
    INTERPOLATED = "interpolated"
    MANUAL = "manual"
    CUSTOMER = "customer"
    ESTIMATED = "estimated"
    UNAVAILABLE = "unavailable"


class ReadSource(enum.StrEnum):
    """Who took a read that did not come from the meter's own telemetry."""

    METER_READER = "meter_reader"
    TECHNICIAN = "technician"
    CUSTOMER = "customer"

    @property
    def method(self) -> ReadMethod:
        return ReadMethod.CUSTOMER if self is ReadSource.CUSTOMER else ReadMethod.MANUAL


class EstimateMethod(enum.StrEnum):
    """Where an estimate's average daily consumption comes from."""

    LAST_3_MONTHS = "last_3_months"
    SAME_MONTH_LAST_YEAR = "same_month_last_year"


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    """Tunable billing rules; the defaults are the documented ones."""

    interpolation_window: timedelta = timedelta(hours=24)
    """Farthest an actual read may be from a boundary to take part in interpolating it."""
    estimate_method: EstimateMethod = EstimateMethod.LAST_3_MONTHS
    """Preferred estimate; the other one is used when the meter lacks the data for it."""
    rollover_margin: float = 0.1
    """Between reads further apart than neighbouring readings: a fall from the top ``margin`` of
    the register's range into its bottom ``margin`` wrapped."""
    series_rollover_margin: float = _DETECTION.rollover_margin
    """Between neighbouring readings, as detection judges them (its ``rollover_margin``)."""
    rollback_resolution: float = _DETECTION.rollback_resolution
    """A fall by at most this much is the register's jitter (detection's setting of the name)."""
    min_rate_span: timedelta = timedelta(days=7)
    """Shortest history an average daily consumption may be computed from."""

    def __post_init__(self) -> None:
        if self.interpolation_window <= timedelta(0):
            raise ValueError("interpolation_window must be positive")
        if not 0 < self.rollover_margin < 0.5:
            raise ValueError("rollover_margin must be between 0 and 0.5")
        if not 0 <= self.series_rollover_margin < 0.5:
            raise ValueError("series_rollover_margin must be at least 0 and below 0.5")
        if self.rollback_resolution < 0:
            raise ValueError("rollback_resolution must not be negative")


@dataclass(frozen=True, slots=True)
class Point:
    """A usable register value: meter telemetry (``ACTUAL``) or a person's accepted read."""

    ts: datetime
    value: float
    method: ReadMethod = ReadMethod.ACTUAL


@dataclass(frozen=True, slots=True)
class BoundaryRead:
    """The register value taken for a period boundary, and how it was obtained."""

    value: float | None
    method: ReadMethod
    estimate_method: EstimateMethod | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of checking a read against the meter's history."""

    accepted: bool
    reason: str | None = None
    detail: str | None = None


def shift_months(at: datetime, months: int) -> datetime:
    """``at`` moved by whole calendar months, the day clamped to the target month's length."""
    index = at.year * 12 + at.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]
    return at.replace(year=year, month=month, day=min(at.day, days))


def to_decimal(value: float | None) -> Decimal | None:
    """A register value or consumption as the exported Decimal (3 places, half-even)."""
    if value is None:
        return None
    return Decimal(repr(value)).quantize(READ_QUANTUM, rounding=ROUND_HALF_EVEN)


def register_modulus(value: float, capacity: float | None = None) -> float:
    """The wrap value of a register showing ``value``: its registered ``capacity``
    (``meters.register_max``) when known, else the next power of ten above the value."""
    return register_capacity(value, capacity)


def is_rollover(prev: float, value: float, margin: float, *, capacity: float | None = None) -> bool:
    """Whether a fall from ``prev`` to ``value`` is a wrap past the register's capacity.

    A register showing more than its registered capacity cannot have wrapped at it.
    """
    if value >= prev:
        return False
    modulus = register_modulus(prev, capacity)
    return modulus * (1.0 - margin) <= prev <= modulus and value <= modulus * margin


def advance(
    prev: float,
    value: float,
    margin: float,
    *,
    capacity: float | None = None,
    resolution: float = 0.0,
) -> float | None:
    """Consumption from ``prev`` to ``value``; ``None`` when the register went backwards.

    A fall by no more than ``resolution`` is jitter: no consumption.
    """
    if value >= prev - resolution:
        return max(value - prev, 0.0)
    if is_rollover(prev, value, margin, capacity=capacity):
        return register_modulus(prev, capacity) - prev + value
    return None


def interpolate(
    before: Point,
    after: Point,
    at: datetime,
    margin: float,
    *,
    capacity: float | None = None,
    resolution: float = 0.0,
) -> float | None:
    """The register at ``at``, linear between two points; ``None`` across a rollback."""
    span = (after.ts - before.ts).total_seconds()
    if span <= 0:
        return before.value
    used = advance(before.value, after.value, margin, capacity=capacity, resolution=resolution)
    if used is None:
        return None
    value = before.value + used * (at - before.ts).total_seconds() / span
    if after.value < before.value:  # wrapped in between: bring it back into range
        modulus = register_modulus(before.value, capacity)
        if value >= modulus:
            value -= modulus
    return value


def _nearest(points: Iterable[Point | None], at: datetime) -> Point | None:
    """The point closest to ``at``; on a tie the meter's own telemetry wins."""
    best: Point | None = None
    for point in points:
        if point is None:
            continue
        if best is None:
            best = point
            continue
        gap, best_gap = abs(point.ts - at), abs(best.ts - at)
        if gap < best_gap or (
            gap == best_gap
            and point.method is ReadMethod.ACTUAL
            and best.method is not ReadMethod.ACTUAL
        ):
            best = point
    return best


def resolve_boundary(
    at: datetime,
    before: Sequence[Point | None],
    after: Sequence[Point | None],
    policy: BillingPolicy,
    *,
    capacity: float | None = None,
) -> BoundaryRead | None:
    """Rules 1-3 of the module docstring; ``None`` means the boundary needs an estimate.

    ``before`` holds candidates at or before ``at``, ``after`` candidates at or after it;
    candidates farther than the interpolation window are ignored. The two points interpolated
    between are neighbours (nothing usable lies between them): a fall between them is judged
    with the series margin.
    """
    window = policy.interpolation_window
    left = _nearest((p for p in before if p is not None and at - window <= p.ts <= at), at)
    right = _nearest((p for p in after if p is not None and at <= p.ts <= at + window), at)
    for point in (left, right):
        if point is not None and point.ts == at:
            exact = _nearest((p for p in (left, right) if p is not None and p.ts == at), at)
            assert exact is not None
            return BoundaryRead(exact.value, exact.method)
    if left is not None and right is not None:
        value = interpolate(
            left,
            right,
            at,
            policy.series_rollover_margin,
            capacity=capacity,
            resolution=policy.rollback_resolution,
        )
        if value is not None:
            return BoundaryRead(value, ReadMethod.INTERPOLATED)
    for point in (left, right):
        if point is not None and point.method is not ReadMethod.ACTUAL:
            other = right if point is left else left
            if other is None or other.method is not ReadMethod.ACTUAL:
                return BoundaryRead(point.value, point.method)
    return None


def daily_rate(
    first: Point, last: Point, policy: BillingPolicy, *, capacity: float | None = None
) -> float | None:
    """Average consumption per day between two points, when the span is long enough."""
    span = last.ts - first.ts
    if span < policy.min_rate_span:
        return None
    used = advance(
        first.value,
        last.value,
        policy.rollover_margin,
        capacity=capacity,
        resolution=policy.rollback_resolution,
    )
    if used is None:
        return None
    return used / (span.total_seconds() / _DAY_S)


def estimate_value(
    at: datetime, basis: Point, rate: float, *, capacity: float | None = None
) -> float:
    """The register at ``at`` projected from ``basis`` at ``rate`` per day.

    With a registered ``capacity`` the projection wraps within the register's range, as the
    register itself would; without one it is never below 0 and never wraps (nothing says at
    which power of ten this register's digits end).
    """
    value = basis.value + rate * (at - basis.ts).total_seconds() / _DAY_S
    if capacity is not None:
        return value % capacity
    return max(0.0, value)


def classify_drops(
    drops: Iterable[tuple[float, float]],
    margin: float,
    *,
    capacity: float | None = None,
    resolution: float = 0.0,
) -> tuple[int, int]:
    """Count the falls of a series (previous, next value) as (rollovers, rollbacks); falls by
    no more than ``resolution`` are jitter and not counted."""
    rollovers = rollbacks = 0
    for prev, value in drops:
        if value >= prev - resolution:
            continue
        if is_rollover(prev, value, margin, capacity=capacity):
            rollovers += 1
        else:
            rollbacks += 1
    return rollovers, rollbacks


def read_time_problem(ts: datetime) -> str | None:
    """Why ``ts`` cannot be a read's time at all, or None when it can.

    A time without an offset (local time in the meter's zone) is compared as written.
    """
    earliest, latest = EARLIEST_READ_AT, LATEST_READ_AT
    if ts.utcoffset() is None:
        earliest, latest = earliest.replace(tzinfo=None), latest.replace(tzinfo=None)
    if ts < earliest:
        return f"is before {earliest:%Y-%m-%d}"
    if ts >= latest:
        return f"is not before {latest:%Y-%m-%d}"
    return None


@dataclass(frozen=True, slots=True)
class PeriodAdvance:
    """A period's consumption between its boundary reads, and what the register did."""

    consumption: float | None
    """``None`` when a read is unavailable or the register went backwards."""
    rolled_over: bool
    """The register wrapped between the reads, or the period's series shows it wrapping."""
    went_back: bool
    """The closing read is below the opening read and that is not a wrap."""
    series: SeriesFalls
    """What the period's series showed, which :func:`consumption_between` takes again."""


@dataclass(frozen=True, slots=True)
class SeriesFalls:
    """How often a period's series rolled over, and how often it went back otherwise."""

    rollovers: int = 0
    rollbacks: int = 0


def period_consumption(
    opening: float | None,
    closing: float | None,
    falls: Iterable[tuple[float, float]],
    policy: BillingPolicy,
    *,
    capacity: float | None = None,
) -> PeriodAdvance:
    """Consumption from a period's opening to its closing read, given the falls of the period's
    series (each a pair of neighbouring readings, previous and next value).

    A closing read below the opening read wrapped when the two reads look like a wrap (the wide
    ``rollover_margin``, since they are a month apart) and the series does not contradict it: a
    series that falls without ever rolling over (each fall judged with the narrow series margin)
    shows the register going back — a meter exchanged or reset — not round; a series that
    rolls over exactly once and never falls otherwise confirms the wrap, even when the reads are
    outside that margin (a period that used much of the register's range). Falls within the
    resolution are jitter, here and in the series.
    """
    rollovers, rollbacks = classify_drops(
        falls,
        policy.series_rollover_margin,
        capacity=capacity,
        resolution=policy.rollback_resolution,
    )
    return consumption_between(
        opening, closing, SeriesFalls(rollovers, rollbacks), policy, capacity=capacity
    )


def consumption_between(
    opening: float | None,
    closing: float | None,
    series: SeriesFalls,
    policy: BillingPolicy,
    *,
    capacity: float | None = None,
) -> PeriodAdvance:
    """:func:`period_consumption` from the series' falls already counted (as a bill keeps
    them, so that a correction judges a wrap as the export did)."""
    seen = series.rollovers > 0
    if opening is None or closing is None:
        return PeriodAdvance(None, seen, went_back=False, series=series)
    if closing >= opening - policy.rollback_resolution:
        return PeriodAdvance(max(closing - opening, 0.0), seen, went_back=False, series=series)
    # The series shows the register going round once and nothing else: that is the wrap,
    # however much of the register's range the period used.
    confirmed = series.rollovers == 1 and series.rollbacks == 0
    contradicted = series.rollbacks > 0 and series.rollovers == 0
    if confirmed or (
        not contradicted
        and is_rollover(opening, closing, policy.rollover_margin, capacity=capacity)
    ):
        used = register_modulus(opening, capacity) - opening + closing
        return PeriodAdvance(used, rolled_over=True, went_back=False, series=series)
    return PeriodAdvance(None, seen, went_back=True, series=series)


def validate_read(
    *,
    ts: datetime,
    value: float,
    previous: Point | None,
    following: Point | None,
    max_per_day: float,
    margin: float,
    capacity: float | None = None,
    resolution: float = 0.0,
    min_elapsed: timedelta = timedelta(hours=1),
) -> Verdict:
    """Check a read against the usable points before and after it.

    Rejected: below the previous read unless it is a rollover (``below_previous_read``); above
    the following read unless that one rolled over (``above_following_read``); more consumption
    since the previous read than ``max_per_day`` allows over the elapsed time, counted as at
    least ``min_elapsed`` (``implausible_consumption``).
    """
    if value < 0 or not math.isfinite(value):
        return Verdict(False, "invalid_value", f"register value {value!r} is not a reading")
    if previous is not None:
        used = advance(previous.value, value, margin, capacity=capacity, resolution=resolution)
        if used is None:
            return Verdict(
                False,
                "below_previous_read",
                f"{value:g} is below the read of {previous.value:g} at "
                f"{previous.ts.isoformat()} and is not a register rollover",
            )
        elapsed = max(ts - previous.ts, min_elapsed)
        limit = max_per_day * elapsed.total_seconds() / _DAY_S
        if used > limit:
            return Verdict(
                False,
                "implausible_consumption",
                f"{used:g} since {previous.ts.isoformat()} exceeds the plausible "
                f"{limit:g} ({max_per_day:g} per day)",
            )
    if (
        following is not None
        and advance(value, following.value, margin, capacity=capacity, resolution=resolution)
        is None
    ):
        return Verdict(
            False,
            "above_following_read",
            f"{value:g} is above the later read of {following.value:g} at "
            f"{following.ts.isoformat()}",
        )
    return Verdict(True)
