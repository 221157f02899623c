"""Water consumption rules: leaks (continuous or night flow) and bursts.

Both read ``measured`` readings only; a missing interval is no evidence of flow.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.detection.model import AlertKind, Episode, MeterData, MeterProfile, Rules
from gateway.detection.rules.series import (
    LITRES_PER_M3,
    WATER_FLOW,
    WATER_REGISTER,
    Interval,
    at_hour,
    local_zone,
    merge,
    register_intervals,
    runs,
)

__all__ = ["detect_burst", "detect_leak"]


def detect_leak(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """Continuous flow for ``leak_window_h``, or night flow above the threshold on
    ``leak_nights`` consecutive nights; ends at the first interval below the threshold."""
    register = data.series(WATER_REGISTER, measured_only=True)
    intervals = list(register_intervals(register, profile.interval_s, LITRES_PER_M3))
    threshold = rules.leak_min_flow_lph
    episodes: list[Episode] = []

    def flowing(iv: Interval) -> bool:
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
    zone = local_zone(profile.time_zone)
    nights: dict[datetime, list[Interval]] = {}
    for iv in intervals:
        if not iv.contiguous:
            continue
        local = iv.start.astimezone(zone)
        w0 = at_hour(local, rules.leak_night_start_h, zone)
        w1 = at_hour(local, rules.leak_night_end_h, zone)
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
            after = at_hour(w0, rules.leak_night_end_h, zone)
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
    for run, ended_by in runs(flow, lambda s: s.value >= limit):
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
