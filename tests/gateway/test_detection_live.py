"""Detection of delivery faults on simulated meters reporting live to a running gateway through
the real broker (see tests/gateway/live_fleet.py for how the fleet's time relates to the
gateway's receive clock): clock drift on a fleet, and a silence whose backlog fills the gap."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from types import MappingProxyType

import psycopg
import pytest

from firmware_sim.faults import Fault, FaultKind
from firmware_sim.identity import MeterIdentity, Utility
from gateway.detection.score import Labelled, render, score
from tests.gateway.live_fleet import (
    Alert,
    current_alerts,
    devices_for,
    fleet_running,
    identities,
    live_clock,
    register,
    settle,
    until,
)
from tests.plugins.gateway import gateway_running, make_settings

pytestmark = pytest.mark.timeout(300)

E, W = Utility.ELECTRICITY, Utility.WATER
S = timedelta(seconds=1)


def drift(meter: MeterIdentity, offset_s: float, start: datetime, end: datetime) -> Fault:
    return Fault(
        meter.meter_id,
        FaultKind.CLOCK_DRIFT,
        start,
        end,
        MappingProxyType({"offset_s": offset_s}),
    )


def kinds_by_meter(alerts: Sequence[Alert]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alert in alerts:
        out.setdefault(alert.meter_id, []).append(alert.kind)
    return out


async def test_clock_drift_on_a_live_fleet_is_found_on_exactly_the_drifting_meters(
    database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    interval = 10
    settings = make_settings(database_url, mqtt_url, topic_prefix)
    async with gateway_running(settings) as handle:
        # 20 simulated minutes of history at 80x (about 15 s), then live.
        clock = live_clock(timedelta(minutes=20), 80.0)
        begin, live = clock.start, clock.caught_up_at()
        stop = live + 75 * S
        after_run = live + timedelta(minutes=10)
        meters = identities(61, [E, W, E, E, E, E, W] + [E, W] * 6)
        faults = [
            # Ten minutes fast from the start (the simulator's default offset).
            drift(meters[0], 600, begin, after_run),
            drift(meters[1], 600, begin, after_run),
            # Two hours fast (local time sent as UTC), set right during the run: its readings
            # of the run come before the ones it sent while fast, in data time.
            drift(meters[2], 7200, begin, live + 35 * S),
            # Jumps 437 s ahead during the run and is set right: the times it sent while ahead
            # interleave with the ones it sends afterwards.
            drift(meters[3], 437, live + 10 * S, live + 45 * S),
            # Slow, within one interval of the tolerance: a late message looks the same beyond.
            drift(meters[4], -125, begin, after_run),
            # Set back during the run, then right again.
            drift(meters[5], -125, live + 5 * S, live + 50 * S),
            drift(meters[6], -125, begin, after_run),
        ]
        drifting = {f.meter_id for f in faults}
        by_meter = {f.meter_id: [f] for f in faults}
        devices = devices_for(61, meters, clock, interval, by_meter)
        url = settings.database_url.get_secret_value()
        register(url, devices, interval)
        async with fleet_running(devices, clock, mqtt_url, topic_prefix) as truth:
            await until(stop)
        await settle(url, handle)

    records = [r for r in truth.records if r.kind is FaultKind.CLOCK_DRIFT]
    assert {r.meter_id for r in records} == drifting
    alerts = current_alerts(url)
    labelled = [Labelled(r.meter_id, r.kind.value, r.start, r.end) for r in records]
    scores = score(labelled, [Labelled(a.meter_id, a.kind, a.start, a.end) for a in alerts])
    table = render(scores)
    print("\n" + table)
    drift_score = next(s for s in scores if s.kind == "clock_drift")
    others = [a for a in alerts if a.kind != "clock_drift"]
    assert (drift_score.precision, drift_score.recall) == (1.0, 1.0), f"{table}\n{alerts}"
    assert others == [], f"other rules raised alerts:\n{table}\n{others}"
    assert kinds_by_meter(alerts) == {m: ["clock_drift"] for m in drifting}
    # Nothing else was raised and withdrawn again, nor notified.
    with psycopg.connect(url) as conn:
        raised = conn.execute("SELECT DISTINCT kind FROM alert_data").fetchall()
        notified = conn.execute("SELECT DISTINCT payload->>'kind' FROM alert_outbox").fetchall()
    assert raised == [("clock_drift",)] and notified == [("clock_drift",)]
    # Episodes end when the meter reports its clock set right, and last while it does not.
    for record in records:
        [alert] = [a for a in alerts if a.meter_id == record.meter_id]
        assert alert.start >= record.start, (alert, record)
        if record.completed:
            assert alert.end is not None, (alert, record)
            assert record.end <= alert.end <= record.end + interval * S, (alert, record)
        else:
            assert alert.end is None, (alert, record)
    assert sum(r.completed for r in records) == 3
