"""The detection rules: a meter's series in, episodes out. Pure, no I/O, no wall clock.

Each ``detect_*`` function takes one meter's profile, its stored data over a window (every
series in ``ts`` order) and the :class:`~gateway.detection.model.Rules`, and returns the
episodes of one alert kind found in that data, merged where they overlap. An episode's
``start``/``end`` are data times: when the condition began and when it was last seen to hold
(``end`` None while it still holds at the end of the data). :func:`evaluate` runs every rule
that applies to the meter's utility.

Consumption rules (leak, burst, reverse flow, stuck register, rollback) read ``measured``
readings only. A missing interval is no evidence of flow: it breaks a "continuous" run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.detection.model import (
    AlertKind,
    Episode,
    MeterData,
    MeterProfile,
    Rules,
    Sample,
)

__all__ = [
    "CUMULATIVE",
    "detect_burst",
    "detect_clock_drift",
    "detect_comms_loss",
    "detect_leak",
    "detect_reverse_flow",
    "detect_rollback",
    "detect_stuck_register",
    "detect_tamper",
    "detect_voltage",
    "evaluate",
    "merge",
    "register_capacity",
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


# ----------------------------------------------------------------------------- helpers


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
class _Interval:
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


def _intervals(samples: Sequence[Sample], interval_s: int, scale: float) -> Iterator[_Interval]:
    limit = timedelta(seconds=interval_s * 1.5)
    for a, b in itertools.pairwise(samples):
        yield _Interval(a.ts, b.ts, (b.value - a.value) * scale, b.ts - a.ts <= limit)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _at_hour(day: datetime, hour: float, zone: ZoneInfo) -> datetime:
    whole = int(hour)
    minutes = round((hour - whole) * 60)
    return datetime.combine(day.date(), time(whole % 24, minutes), zone)


def _runs(
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


# ----------------------------------------------------------------------------- leak


def detect_leak(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """Continuous flow for ``leak_window_h``, or night flow above the threshold on
    ``leak_nights`` consecutive nights; ends at the first interval below the threshold."""
    register = data.series(WATER_REGISTER, measured_only=True)
    intervals = list(_intervals(register, profile.interval_s, LITRES_PER_M3))
    threshold = rules.leak_min_flow_lph
    episodes: list[Episode] = []

    def flowing(iv: _Interval) -> bool:
        return iv.contiguous and iv.amount >= threshold * iv.hours

    # Continuous-flow rule.
    run_start: datetime | None = None
    opened: datetime | None = None
    window = timedelta(hours=rules.leak_window_h)
    for iv in intervals:
        if not iv.contiguous:
            run_start = None  # a gap breaks the run; an open episode goes on
            continue
        if flowing(iv):
            if run_start is None:
                run_start = iv.start
            if opened is None and iv.end - run_start >= window:
                opened = run_start
        else:
            if opened is not None:
                episodes.append(
                    Episode(AlertKind.LEAK, opened, iv.start, {"rule": "continuous_flow"})
                )
            opened = run_start = None
    if opened is not None:
        episodes.append(Episode(AlertKind.LEAK, opened, None, {"rule": "continuous_flow"}))

    # Minimum-night-flow rule.
    zone = _zone(profile.time_zone)
    nights: dict[datetime, list[_Interval]] = {}
    for iv in intervals:
        if not iv.contiguous:
            continue
        local = iv.start.astimezone(zone)
        w0 = _at_hour(local, rules.leak_night_start_h, zone)
        w1 = _at_hour(local, rules.leak_night_end_h, zone)
        if local >= w0 and iv.end.astimezone(zone) <= w1:
            nights.setdefault(w0, []).append(iv)
    span_h = rules.leak_night_end_h - rules.leak_night_start_h
    positive = sorted(
        w0
        for w0, ivs in nights.items()
        if sum(iv.hours for iv in ivs) >= 0.9 * span_h and min(iv.rate() for iv in ivs) > threshold
    )
    streak: list[datetime] = []
    for w0 in positive:
        if streak and (w0.date() - streak[-1].date()).days != 1:
            streak = []
        streak.append(w0)
        if len(streak) >= max(1, rules.leak_nights):
            first = streak[-rules.leak_nights] if rules.leak_nights else w0
            after = _at_hour(w0, rules.leak_night_end_h, zone)
            end = next(
                (iv.start for iv in intervals if iv.start >= after and not flowing(iv)), None
            )
            episodes.append(
                Episode(
                    AlertKind.LEAK,
                    first.astimezone(UTC),
                    end,
                    {"rule": "night_flow", "nights": len(streak)},
                )
            )
    return merge(episodes)


# ----------------------------------------------------------------------------- burst


def detect_burst(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """Flow ≥ ``burst_flow_lph`` on ≥ ``burst_min_readings`` consecutive readings spanning
    ≥ ``burst_min_minutes``, or a ``burst_detected`` event (which lasts while the flow stays at
    burst level)."""
    flow = data.series(WATER_FLOW, measured_only=True)
    register = data.series(WATER_REGISTER, measured_only=True)
    volume = {s.ts: s.value for s in register}
    limit = rules.burst_flow_lph
    needed = timedelta(minutes=rules.burst_min_minutes)
    episodes: list[Episode] = []
    for run, ended_by in _runs(flow, lambda s: s.value >= limit):
        if run[-1].ts - run[0].ts < needed or len(run) < rules.burst_min_readings:
            continue
        # The register must agree: the volume between the samples averages burst level.
        first, last = run[0], run[-1]
        if first.ts in volume and last.ts in volume:
            litres = (volume[last.ts] - volume[first.ts]) * LITRES_PER_M3
            if litres < limit * (last.ts - first.ts).total_seconds() / 3600.0:
                continue
        episodes.append(
            Episode(
                AlertKind.BURST,
                first.ts,
                last.ts if ended_by is not None else None,
                {"rule": "sustained_flow", "max_flow_lph": max(s.value for s in run)},
            )
        )
    for event in data.events:
        if event.type != "burst_detected":
            continue
        # A reading within one interval of the event mostly covers the time before it.
        settle = event.ts + timedelta(seconds=profile.interval_s)
        last_seen = event.ts
        still = True
        for sample in flow:
            if sample.ts <= event.ts:
                continue
            if sample.value < limit:
                if sample.ts < settle:
                    continue
                still = False
                break
            last_seen = sample.ts
        episodes.append(
            Episode(AlertKind.BURST, event.ts, None if still else last_seen, {"rule": "event"})
        )
    return merge(episodes)


# ----------------------------------------------------------------------------- reverse flow


def _advancing(
    samples: Sequence[Sample], profile: MeterProfile, scale: float, minimum: float, rules: Rules
) -> list[Episode]:
    """Runs of a reverse register advancing, kept where it advanced ≥ ``minimum`` within the
    reverse window."""
    window = timedelta(minutes=rules.reverse_window_minutes)
    episodes: list[Episode] = []
    run: list[_Interval] = []

    def close(run: list[_Interval], end: datetime | None) -> None:
        best = 0.0
        for i, iv in enumerate(run):
            total = 0.0
            for other in run[i:]:
                if other.end - iv.start > window and other is not iv:
                    break
                total += other.amount
            best = max(best, total)
        if best >= minimum:
            episodes.append(
                Episode(
                    AlertKind.REVERSE_FLOW,
                    run[0].start,
                    end,
                    {"rule": "reverse_register", "max_per_window": round(best, 3)},
                )
            )

    for iv in _intervals(samples, profile.interval_s, scale):
        if iv.amount > rules.rollback_resolution * scale / 2 and iv.end - iv.start <= window * 2:
            run.append(iv)
        elif run:
            close(run, run[-1].end)
            run = []
    if run:
        close(run, None)
    return episodes


def _negative(samples: Sequence[Sample], rules: Rules, rule: str) -> list[Episode]:
    needed = timedelta(minutes=rules.reverse_negative_minutes)
    return [
        Episode(AlertKind.REVERSE_FLOW, run[0].ts, run[-1].ts if ended else None, {"rule": rule})
        for run, ended in _runs(samples, lambda s: s.value < 0)
        if run[-1].ts - run[0].ts >= needed
    ]


def detect_reverse_flow(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """Water flowing backwards, or energy exported on a service not allowed to export."""
    if profile.utility == "water":
        reverse = data.series(WATER_REVERSE, measured_only=True)
        episodes = _advancing(reverse, profile, LITRES_PER_M3, rules.reverse_water_litres, rules)
        episodes += _negative(data.series(WATER_FLOW, measured_only=True), rules, "negative_flow")
    elif profile.utility == "electricity":
        if profile.export_allowed:
            return []
        export = data.series(EXPORT_REGISTER, measured_only=True)
        episodes = _advancing(export, profile, 1.0, rules.reverse_energy_kwh, rules)
        episodes += _negative(
            data.series(ACTIVE_POWER, measured_only=True), rules, "negative_power"
        )
    else:
        return []
    episodes += [
        Episode(AlertKind.REVERSE_FLOW, e.ts, e.ts, {"rule": "event"})
        for e in data.events
        if e.type == "reverse_flow"
    ]
    return merge(episodes)


# ----------------------------------------------------------------------------- stuck register


def detect_stuck_register(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """The cumulative register unchanged for ``stuck_hours`` while the meter's own
    instantaneous channel (forward only) integrates to at least the minimum over that span."""
    if profile.utility == "water":
        register = data.series(WATER_REGISTER, measured_only=True)
        instant = data.series(WATER_FLOW, measured_only=True)
        minimum = rules.stuck_min_litres
    elif profile.utility == "electricity":
        register = data.series(IMPORT_REGISTER, measured_only=True)
        instant = data.series(ACTIVE_POWER, measured_only=True)
        minimum = rules.stuck_min_kwh
    else:
        return []
    needed = timedelta(hours=rules.stuck_hours)
    episodes: list[Episode] = []
    i = 0
    while i < len(register):
        j = i
        while j + 1 < len(register) and register[j + 1].value == register[i].value:
            j += 1
        first, last = register[i], register[j]
        if last.ts - first.ts >= needed:
            integral = _integrate(instant, first.ts, last.ts)
            if integral >= minimum:
                episodes.append(
                    Episode(
                        AlertKind.STUCK_REGISTER,
                        first.ts,
                        register[j + 1].ts if j + 1 < len(register) else None,
                        {"register": first.value, "integrated": round(integral, 3)},
                    )
                )
        i = j + 1
    return episodes


def _integrate(samples: Sequence[Sample], start: datetime, end: datetime) -> float:
    """Forward-only integral (value × hours) of ``samples`` over ``(start, end]``, each sample
    standing for the span since the previous one."""
    total = 0.0
    previous = start
    for sample in samples:
        if sample.ts <= start:
            continue
        if sample.ts > end:
            break
        total += max(sample.value, 0.0) * (sample.ts - previous).total_seconds() / 3600.0
        previous = sample.ts
    return total


# ----------------------------------------------------------------------------- rollback


def register_capacity(previous: float, register_max: float | None) -> float:
    """The register's capacity: the registry's ``register_max``, or the next power of ten."""
    if register_max is not None and register_max > 0:
        return register_max
    if previous <= 0:
        return 1.0
    return 10.0 ** (math.floor(math.log10(previous)) + 1)


def detect_rollback(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """A cumulative register going down by more than its resolution, unless it rolled over."""
    episodes: list[Episode] = []
    for channel in CUMULATIVE:
        samples = data.series(channel, measured_only=True)
        for a, b in itertools.pairwise(samples):
            if b.value >= a.value - rules.rollback_resolution:
                continue
            capacity = register_capacity(a.value, profile.register_max)
            margin = rules.rollover_margin * capacity
            if a.value >= capacity - margin and b.value <= margin:
                continue  # rollover
            episodes.append(
                Episode(
                    AlertKind.REGISTER_ROLLBACK,
                    a.ts,
                    b.ts,
                    {
                        "channel": channel,
                        "previous": a.value,
                        "value": b.value,
                        "drop": round(a.value - b.value, 6),
                    },
                )
            )
    return merge(episodes)


# ----------------------------------------------------------------------------- comms loss


def _instants(data: MeterData) -> list[tuple[datetime, datetime | None]]:
    """Every stored instant of the meter (any channel, any quality): (ts, first received)."""
    seen: dict[datetime, datetime | None] = {}
    for samples in data.channels.values():
        for s in samples:
            known = seen.get(s.ts)
            if s.ts not in seen or (
                s.received_at is not None and (known is None or s.received_at < known)
            ):
                seen[s.ts] = s.received_at
    return sorted(seen.items())


def detect_comms_loss(
    profile: MeterProfile, data: MeterData, rules: Rules, now: datetime | None = None
) -> list[Episode]:
    """A gap in data time longer than the threshold; or, for a meter that was reporting live,
    silence in receive time past the threshold (open at once, closed by the backlog)."""
    threshold = timedelta(
        seconds=max(rules.comms_intervals * profile.interval_s, rules.comms_min_hours * 3600)
    )
    live_slack = timedelta(seconds=profile.interval_s)
    instants = _instants(data)
    episodes: list[Episode] = []
    for (a, _), (b, _) in itertools.pairwise(instants):
        if b - a > threshold:
            episodes.append(Episode(AlertKind.COMMS_LOSS, a, b, {"rule": "data_gap"}))
    # Receive-time silence after a live instant: when did the next newer data arrive?
    next_arrival: list[datetime | None] = [None] * len(instants)
    soonest: datetime | None = None
    for k in range(len(instants) - 1, -1, -1):
        next_arrival[k] = soonest
        received = instants[k][1]
        if received is not None and (soonest is None or received < soonest):
            soonest = received
    for k, (ts, received) in enumerate(instants):
        if received is None or abs(received - ts) > live_slack:
            continue
        arrival = next_arrival[k]
        if arrival is None:
            if now is not None and now - received > threshold:
                episodes.append(
                    Episode(
                        AlertKind.COMMS_LOSS, ts, None, {"rule": "silence", "since": ts.isoformat()}
                    )
                )
            continue
        if arrival - received <= threshold:
            continue
        later = instants[k + 1 :]
        live_again = next((t for t, r in later if r is not None and abs(r - t) <= live_slack), None)
        if live_again is None:
            batch = [t for t, r in later if r is not None and r <= arrival + live_slack]
            live_again = max(batch) if batch else later[0][0]
        episodes.append(Episode(AlertKind.COMMS_LOSS, ts, live_again, {"rule": "silence"}))
    return merge(episodes)


# ----------------------------------------------------------------------------- clock drift


def detect_clock_drift(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """Device time off the gateway's receive time by more than ``drift_max_s`` on
    ``drift_messages`` consecutive live messages; a ``clock_adjusted`` event ends it."""
    newest: dict[datetime, datetime] = {}
    for samples in data.channels.values():
        for s in samples:
            if s.received_at is not None:
                current = newest.get(s.received_at)
                newest[s.received_at] = s.ts if current is None else max(current, s.ts)
    live_slack = timedelta(seconds=profile.interval_s)
    limit = timedelta(seconds=rules.drift_max_s)
    adjusted = sorted(e.ts for e in data.events if e.type == "clock_adjusted")
    episodes: list[Episode] = []
    streak: list[tuple[datetime, datetime]] = []
    opened: datetime | None = None
    for received, ts in sorted(newest.items()):
        offset = ts - received
        if abs(offset) > live_slack + limit:
            continue  # not a live message: says nothing about the clock
        if opened is not None and any(opened <= t <= received for t in adjusted):
            end = next(t for t in adjusted if opened <= t <= received)
            episodes.append(Episode(AlertKind.CLOCK_DRIFT, opened, end, {"rule": "offset"}))
            opened, streak = None, []
        if abs(offset) > limit:
            streak.append((received, ts))
            if opened is None and len(streak) >= rules.drift_messages:
                opened = streak[0][0]
        else:
            if opened is not None:
                episodes.append(
                    Episode(AlertKind.CLOCK_DRIFT, opened, received, {"rule": "offset"})
                )
            opened, streak = None, []
    if opened is not None:
        adjusted_at = next((t for t in adjusted if t >= opened), None)
        episodes.append(Episode(AlertKind.CLOCK_DRIFT, opened, adjusted_at, {"rule": "offset"}))
    return merge(episodes)


# ----------------------------------------------------------------------------- voltage


def detect_voltage(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """Any phase voltage outside the band on ``voltage_readings`` consecutive readings."""
    if profile.utility != "electricity":
        return []
    phases: dict[datetime, list[float]] = {}
    for channel in VOLTAGES:
        for s in data.series(channel, measured_only=True):
            phases.setdefault(s.ts, []).append(s.value)
    instants = [Sample(ts, 0.0) for ts in sorted(phases)]
    low = rules.sag_factor * rules.nominal_voltage
    high = rules.swell_factor * rules.nominal_voltage
    episodes: list[Episode] = []
    for kind, outside in (
        (AlertKind.VOLTAGE_SAG, lambda s: min(phases[s.ts]) < low),
        (AlertKind.VOLTAGE_SWELL, lambda s: max(phases[s.ts]) > high),
    ):
        for run, ended_by in _runs(instants, outside):
            if len(run) < rules.voltage_readings:
                continue
            values = [v for s in run for v in phases[s.ts]]
            extreme = min(values) if kind is AlertKind.VOLTAGE_SAG else max(values)
            episodes.append(
                Episode(
                    kind,
                    run[0].ts,
                    run[-1].ts if ended_by else None,
                    {"readings": len(run), "extreme_v": extreme},
                )
            )
    return episodes


# ----------------------------------------------------------------------------- tamper


def detect_tamper(
    data: MeterData, resolutions: Mapping[AlertKind, Sequence[datetime]] | None = None
) -> list[Episode]:
    """Cover open → closed; a magnetic field stays open until an operator resolves it."""
    episodes: list[Episode] = []
    opened: datetime | None = None
    for event in data.events:
        if event.type == "tamper_cover_open" and opened is None:
            opened = event.ts
        elif event.type == "tamper_cover_closed" and opened is not None:
            episodes.append(Episode(AlertKind.TAMPER_COVER, opened, event.ts, {"rule": "event"}))
            opened = None
    if opened is not None:
        episodes.append(Episode(AlertKind.TAMPER_COVER, opened, None, {"rule": "event"}))
    resolved = sorted((resolutions or {}).get(AlertKind.TAMPER_MAGNETIC, ()))
    magnetic: datetime | None = None
    magnetic_end: datetime | None = None
    for event in data.events:
        if event.type != "magnetic_field":
            continue
        if magnetic is not None and (magnetic_end is None or event.ts <= magnetic_end):
            continue
        if magnetic is not None:
            episodes.append(Episode(AlertKind.TAMPER_MAGNETIC, magnetic, magnetic_end, {}))
        magnetic = event.ts
        magnetic_end = next((r for r in resolved if r >= event.ts), None)
    if magnetic is not None:
        episodes.append(
            Episode(AlertKind.TAMPER_MAGNETIC, magnetic, magnetic_end, {"rule": "event"})
        )
    return episodes


# ----------------------------------------------------------------------------- all rules


def evaluate(
    profile: MeterProfile,
    data: MeterData,
    rules: Rules,
    *,
    now: datetime | None = None,
    resolutions: Mapping[AlertKind, Sequence[datetime]] | None = None,
) -> list[Episode]:
    """Every episode of every kind that applies to the meter, by kind then start.

    ``now`` is the gateway's receive clock (for silence of a live meter); ``resolutions`` the
    times operators resolved alerts that stay open until resolved (magnetic tamper).
    """
    episodes: list[Episode] = []
    if profile.utility == "water":
        episodes += detect_leak(profile, data, rules)
        episodes += detect_burst(profile, data, rules)
    if profile.utility == "electricity":
        episodes += detect_voltage(profile, data, rules)
    episodes += detect_reverse_flow(profile, data, rules)
    episodes += detect_stuck_register(profile, data, rules)
    episodes += detect_rollback(profile, data, rules)
    episodes += detect_comms_loss(profile, data, rules, now)
    episodes += detect_clock_drift(profile, data, rules)
    episodes += detect_tamper(data, resolutions)
    return sorted(episodes, key=lambda e: (e.kind.value, e.start))
