"""Detection of delivery faults on simulated meters reporting live to a running gateway through
the real broker (see tests/gateway/live_fleet.py for how the fleet's time relates to the
gateway's receive clock): clock drift on a fleet, and a silence whose backlog fills the gap."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
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
    withdrawn_alerts,
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


# At 10-second intervals the rules' own thresholds are scaled to what a run of two minutes can
# show: comms loss after 3 silent intervals (30 s); a register stuck for 30 s over at least two
# units of its resolution of metered flow (2 l, 0.002 kWh: an honest register cannot stay flat
# over that); a leak after 40 s of at least 4 l in every interval (1440 l/h, above what a
# household draws, so a leak here is one the simulator was told to make).
SCALED_RULES = {
    "comms_min_hours": 0.0,
    "stuck_hours": 30 / 3600,
    "stuck_min_litres": 2.0,
    "stuck_min_kwh": 0.002,
    "leak_window_h": 40 / 3600,
    "leak_min_flow_lph": 1440.0,
}


def fault(
    meter: MeterIdentity, kind: FaultKind, start: datetime, end: datetime, **params: float
) -> Fault:
    return Fault(meter.meter_id, kind, start, end, MappingProxyType(params))


async def test_silence_then_its_backlog_closes_comms_loss_and_invents_no_leak_or_stuck(
    database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    interval = 10
    settings = make_settings(
        database_url,
        mqtt_url,
        topic_prefix,
        detection_rules=SCALED_RULES,
        detection_sweep_ms=1000,
    )
    url = settings.database_url.get_secret_value()
    async with gateway_running(settings) as handle:
        clock = live_clock(timedelta(minutes=5), 60.0)
        live = clock.caught_up_at()
        silent_from, back_at = live + 10 * S, live + 60 * S
        stop = back_at + 20 * S
        meters = identities(62, [W, E, W, W, W, E, W, E])
        plain_water, plain_elec, stuck, leaking = meters[:4]
        silent = meters[:4]
        faults = [fault(m, FaultKind.COMMS_LOSS, silent_from, back_at) for m in silent]
        # A register frozen while water flows, wholly inside the silence: only the backlog shows
        # it. (A leak is the simulator's way to make water flow for sure.)
        frozen = (silent_from + 5 * S, back_at - 5 * S)
        faults += [
            fault(stuck, FaultKind.STUCK_REGISTER, *frozen),
            fault(stuck, FaultKind.LEAK, *frozen, rate_lph=3000.0),
            # A leak that starts before the silence and goes on: continuous only once the
            # backlog has filled the gap.
            fault(leaking, FaultKind.LEAK, silent_from - 10 * S, stop + 60 * S, rate_lph=3000.0),
        ]
        by_meter: dict[str, list[Fault]] = {}
        for f in faults:
            by_meter.setdefault(f.meter_id, []).append(f)
        devices = devices_for(62, meters, clock, interval, by_meter)
        register(url, devices, interval)
        async with fleet_running(devices, clock, mqtt_url, topic_prefix):
            # While the meters are silent, comms loss opens on each of them at once.
            silent_ids = {m.meter_id for m in silent}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (back_at - datetime.now(UTC)).total_seconds() - 2
            opened: list[Alert] = []
            while loop.time() < deadline:
                opened = [a for a in current_alerts(url) if a.kind == "comms_loss"]
                if {a.meter_id for a in opened} == silent_ids:
                    break
                await asyncio.sleep(0.5)
            assert datetime.now(UTC) < back_at, "the test ran late: the silence is over"
            assert {a.meter_id for a in opened} == silent_ids, opened
            assert all(a.end is None for a in opened), opened
            await until(stop)
        await settle(url, handle)

    alerts = current_alerts(url)
    assert withdrawn_alerts(url) == []
    healthy = {m.meter_id for m in meters[4:]}
    assert [a for a in alerts if a.meter_id in healthy] == []
    assert kinds_by_meter(alerts) == {
        plain_water.meter_id: ["comms_loss"],
        plain_elec.meter_id: ["comms_loss"],
        stuck.meter_id: ["comms_loss", "stuck_register"],
        leaking.meter_id: ["comms_loss", "leak"],
    }, alerts
    # The very alerts opened during the silence, closed by the backlog with the true span: from
    # the last reading before it to the first that arrived live again.
    by_id = {a.id: a for a in alerts}
    for before in opened:
        after = by_id[before.id]
        assert after.kind == "comms_loss" and after.end is not None, after
        assert silent_from - interval * S <= after.start <= silent_from + interval * S, after
        assert back_at - interval * S <= after.end <= back_at + 2 * interval * S, after
    # What the backlog held is judged in data time: the stuck register until it moved again
    # (from the start of its flat run, which may begin before the freeze when nothing was
    # drawn), the leak from where it began before the silence.
    [stuck_alert] = [a for a in alerts if a.kind == "stuck_register"]
    assert stuck_alert.start <= frozen[0] + interval * S, stuck_alert
    assert stuck_alert.end is not None, stuck_alert
    assert frozen[1] <= stuck_alert.end <= frozen[1] + 2 * interval * S, stuck_alert
    [leak_alert] = [a for a in alerts if a.kind == "leak"]
    assert silent_from - 10 * S <= leak_alert.start <= silent_from, leak_alert
    assert leak_alert.end is None
