"""Delivery rules: comms loss and clock drift, the two that compare data time with the
gateway's receive clock (``received_at``, and ``now`` passed in: never the wall clock)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta

from gateway.detection.model import AlertKind, Episode, MeterData, MeterProfile, Rules
from gateway.detection.rules.series import merge

__all__ = ["detect_clock_drift", "detect_comms_loss"]


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


def _clock_jump(
    arrivals: Sequence[tuple[datetime, bool]],
    times: Sequence[datetime],
    a_received: datetime,
    b_received: datetime,
    threshold: timedelta,
) -> bool:
    """Whether, between the arrivals of the readings on either side of a gap in data time, the
    meter delivered with no silence past ``threshold`` and some of what it delivered was
    stamped ahead of its arrival (``arrivals``: every arrival in order, and whether it was
    stamped ahead; ``times``: just the arrivals). Readings lost in an outage, or all delivered
    at once later, are no such thing."""
    lo, hi = sorted((a_received, b_received))
    inside = arrivals[bisect.bisect_left(times, lo) : bisect.bisect_right(times, hi)]
    if not any(ahead for _, ahead in inside):
        return False
    points = [lo, *(r for r, _ in inside), hi]
    return all(y - x <= threshold for x, y in itertools.pairwise(points))


def detect_comms_loss(
    profile: MeterProfile, data: MeterData, rules: Rules, now: datetime | None = None
) -> list[Episode]:
    """A gap in data time longer than the threshold; or, for a meter that was reporting live,
    silence in receive time past the threshold (open at once, closed by the backlog).

    A gap in data time across which the meter kept delivering, some of it stamped ahead of its
    arrival, is its clock jumping ahead (or set right after running ahead), not a silence.
    """
    threshold = timedelta(
        seconds=max(rules.comms_intervals * profile.interval_s, rules.comms_min_hours * 3600)
    )
    live_slack = timedelta(seconds=profile.interval_s)
    instants = _instants(data)
    gaps = [
        ((a, a_received), (b, b_received))
        for (a, a_received), (b, b_received) in itertools.pairwise(instants)
        if b - a > threshold
    ]
    episodes: list[Episode] = []
    if gaps:  # rare: only then sort the arrivals
        arrivals = sorted(
            (received, ts - received > timedelta(seconds=rules.drift_max_s))
            for ts, received in instants
            if received is not None
        )
        times = [r for r, _ in arrivals]
        for (a, a_received), (b, b_received) in gaps:
            if (
                a_received is not None
                and b_received is not None
                and _clock_jump(arrivals, times, a_received, b_received, threshold)
            ):
                continue
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


def detect_clock_drift(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """Device time off the gateway's receive time by more than ``drift_max_s`` on
    ``drift_messages`` consecutive live messages; a ``clock_adjusted`` event ends it.

    A delivery's newest reading stamped *ahead* of its arrival shows a clock that is fast by at
    least that much, however far (nothing arrives before it was read). One stamped behind is
    live only within an interval of the tolerance: further behind, a slow clock and a late
    delivery look the same, and a late delivery says nothing about the clock.
    """
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
        if offset < -(live_slack + limit):
            continue  # late, or a clock too slow to tell from late: says nothing
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
