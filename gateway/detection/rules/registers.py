"""Register rules on both utilities: reverse flow, a stuck register, a register rolled back.

They read ``measured`` readings only. Water registers are in m³, electricity in kWh.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from gateway.detection.model import AlertKind, Episode, MeterData, MeterProfile, Rules, Sample
from gateway.detection.rules.series import (
    ACTIVE_POWER,
    CUMULATIVE,
    EXPORT_REGISTER,
    IMPORT_REGISTER,
    LITRES_PER_M3,
    WATER_FLOW,
    WATER_REGISTER,
    WATER_REVERSE,
    Interval,
    merge,
    register_intervals,
    runs,
)

__all__ = ["detect_reverse_flow", "detect_rollback", "detect_stuck_register", "register_capacity"]


def _advancing(
    samples: Sequence[Sample], profile: MeterProfile, scale: float, minimum: float, rules: Rules
) -> list[Episode]:
    """Runs of a reverse register advancing, kept where it advanced ≥ ``minimum`` within the
    reverse window."""
    window = timedelta(minutes=rules.reverse_window_minutes)
    episodes: list[Episode] = []
    run: list[Interval] = []

    def close(run: list[Interval], end: datetime | None) -> None:
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

    for iv in register_intervals(samples, profile.interval_s, scale):
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
        for run, ended in runs(samples, lambda s: s.value < 0)
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


def register_capacity(previous: float, register_max: float | None) -> float:
    """The register's capacity: the registry's ``register_max``, or the next power of ten."""
    if register_max is not None and register_max > 0:
        return register_max
    if previous <= 0:
        return 1.0
    return 10.0 ** (math.floor(math.log10(previous)) + 1)


def _clock_set_back(samples: Sequence[Sample], i: int, resolution: float) -> bool:
    """Whether the drop from ``samples[i]`` to the next (in ``ts`` order) is the meter's clock
    set back between two readings rather than its register going back.

    The later-stamped reading arrived first, so the meter read it first; and the first reading
    to arrive after the earlier-stamped one (stamped later still) does not read lower than it:
    in the order the meter read them the register never went down. A register that did go back
    reads lower after it however its messages were delivered (a reordered delivery is judged
    once a later reading has arrived).
    """
    a, b = samples[i], samples[i + 1]
    if a.received_at is None or b.received_at is None or b.received_at >= a.received_at:
        return False
    read_after = [
        s for s in samples[i + 1 :] if s.received_at is not None and s.received_at > a.received_at
    ]
    if not read_after:
        return True
    following = min(read_after, key=lambda s: (s.received_at or s.ts, s.ts))
    return following.value >= a.value - resolution


def detect_rollback(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """A cumulative register going down by more than its resolution, unless it rolled over or
    the meter's clock was set back between the two readings."""
    episodes: list[Episode] = []
    for channel in CUMULATIVE:
        samples = data.series(channel, measured_only=True)
        for i, (a, b) in enumerate(itertools.pairwise(samples)):
            if b.value >= a.value - rules.rollback_resolution:
                continue
            capacity = register_capacity(a.value, profile.register_max)
            margin = rules.rollover_margin * capacity
            if a.value >= capacity - margin and b.value <= margin:
                continue  # rollover
            if _clock_set_back(samples, i, rules.rollback_resolution):
                continue
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
