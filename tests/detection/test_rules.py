"""Each detection rule on plain values: what raises an episode, what must not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.detection.model import (
    AlertKind,
    Episode,
    EventRecord,
    MeterData,
    MeterProfile,
    Rules,
    Sample,
)
from gateway.detection.reconcile import StoredAlert, reconcile
from gateway.detection.rules import (
    detect_burst,
    detect_clock_drift,
    detect_comms_loss,
    detect_leak,
    detect_reverse_flow,
    detect_rollback,
    detect_stuck_register,
    detect_tamper,
    detect_voltage,
    evaluate,
    register_capacity,
)

T0 = datetime(2026, 1, 5, tzinfo=UTC)
Q = timedelta(minutes=15)
RULES = Rules()
WATER = MeterProfile("20100000001", "water", 900)
ELEC = MeterProfile("10100000001", "electricity", 900)


def at(k: int) -> datetime:
    return T0 + k * Q


def register(litres_per_interval: list[float], start_m3: float = 100.0) -> list[Sample]:
    """A water register (m³) advancing by the given litres in each 15-min interval."""
    value = start_m3
    out = [Sample(at(0), value)]
    for k, litres in enumerate(litres_per_interval, start=1):
        value = round(value + litres / 1000.0, 3)
        out.append(Sample(at(k), value))
    return out


def quiet_day_pattern(days: int) -> list[float]:
    """Normal household: use during the day, nothing between 00:00 and 05:00."""
    out = []
    for k in range(days * 96):
        hour = (k * 15 // 60) % 24
        out.append(0.0 if hour < 5 else 10.0)
    return out


# --------------------------------------------------------------------------- leak


def test_continuous_flow_for_24h_is_a_leak_that_ends_at_the_first_dry_interval() -> None:
    flows = [3.0] * (96 + 8) + [0.0] + [0.0] * 4  # 26 h of ≥ 12 l/h, then none
    data = MeterData({"24.2.1": register(flows)})
    [leak] = detect_leak(WATER, data, RULES)
    assert leak.start == at(0)
    assert leak.end == at(104)


def test_still_running_leak_is_open() -> None:
    data = MeterData({"24.2.1": register([3.0] * 100)})
    [leak] = detect_leak(WATER, data, RULES)
    assert leak.end is None


def test_23_hours_of_flow_or_a_gap_is_no_leak() -> None:
    assert detect_leak(WATER, MeterData({"24.2.1": register([3.0] * 92 + [0.0] * 10)}), RULES) == []
    samples = register([3.0] * 104)  # 26 h: only one whole night window
    gapped = samples[:50] + samples[58:]  # 2 h missing in the middle: a gap breaks the run
    assert detect_leak(WATER, MeterData({"24.2.1": gapped}), RULES) == []


def test_flow_below_threshold_is_no_leak() -> None:
    # 1 l per 15 min is 4 l/h ≥ 2: a leak; 0.4 l per interval (1.6 l/h) would not be.
    assert detect_leak(WATER, MeterData({"24.2.1": register([1.0] * 110)}), RULES)
    small = [Sample(at(k), 100.0 + k * 0.0004) for k in range(110)]
    assert detect_leak(WATER, MeterData({"24.2.1": small}), RULES) == []


def test_estimated_readings_are_not_evidence_of_flow() -> None:
    samples = [Sample(s.ts, s.value, measured=False) for s in register([3.0] * 110)]
    assert detect_leak(WATER, MeterData({"24.2.1": samples}), RULES) == []


def test_night_flow_on_two_consecutive_nights_is_a_leak() -> None:
    # Normal days, but 1.5 l every 15 min during the night (6 l/h): never 24 h continuous?
    # It is continuous here, so break the day with one dry interval at noon each day.
    flows = []
    for k in range(3 * 96):
        hour = (k * 15 // 60) % 24
        flows.append(0.0 if hour == 12 and k % 4 == 0 else 1.5 if hour < 5 else 10.0)
    episodes = detect_leak(WATER, MeterData({"24.2.1": register(flows)}), RULES)
    assert episodes, "two nights of flow must raise a leak"
    assert all(e.kind is AlertKind.LEAK for e in episodes)
    assert episodes[0].start == T0 + timedelta(hours=1)
    assert "night_flow" in episodes[0].evidence.get("rule", "")


def test_quiet_nights_raise_nothing() -> None:
    data = MeterData({"24.2.1": register(quiet_day_pattern(5))})
    assert detect_leak(WATER, data, RULES) == []


def test_night_window_is_local_time() -> None:
    # Flow only 23:00-02:00 UTC = 01:00-04:00 in Africa/Johannesburg (UTC+2).
    flows = []
    for k in range(4 * 96):
        hour = (k * 15 // 60) % 24
        flows.append(1.5 if hour >= 23 or hour < 2 else 0.0)
    data = MeterData({"24.2.1": register(flows)})
    local = MeterProfile("w", "water", 900, time_zone="Africa/Johannesburg")
    assert detect_leak(local, data, RULES)
    assert detect_leak(WATER, data, RULES) == []


# --------------------------------------------------------------------------- burst


def flow_series(values: list[float]) -> list[Sample]:
    return [Sample(at(k), v) for k, v in enumerate(values)]


def test_sustained_high_flow_is_a_burst() -> None:
    flow = flow_series([0, 0, 1500, 1500, 1500, 0, 0])
    reg = register([0, 0, 375, 375, 375, 375, 0, 0])
    [burst] = detect_burst(WATER, MeterData({"water.flow": flow, "24.2.1": reg}), RULES)
    assert (burst.start, burst.end) == (at(2), at(4))


def test_short_high_flow_is_no_burst() -> None:
    flow = flow_series([0, 900, 900, 0, 0])  # a garden hose for ~20 min
    assert detect_burst(WATER, MeterData({"water.flow": flow}), RULES) == []


def test_two_hourly_readings_of_heavy_use_are_no_burst() -> None:
    hourly = MeterProfile("w", "water", 3600)
    flow = [Sample(T0 + timedelta(hours=h), v) for h, v in enumerate([0, 600, 900, 0])]
    assert detect_burst(hourly, MeterData({"water.flow": flow}), RULES) == []
    flow = [Sample(T0 + timedelta(hours=h), v) for h, v in enumerate([0, 1600, 1600, 1600, 0])]
    assert detect_burst(hourly, MeterData({"water.flow": flow}), RULES)


def test_burst_event_late_in_an_interval_joins_the_flow_that_follows() -> None:
    hourly = MeterProfile("w", "water", 3600)
    flow = [Sample(T0 + timedelta(hours=h), v) for h, v in enumerate([0, 300, 1500, 1500, 0])]
    event = EventRecord(T0 + timedelta(minutes=50), "burst_detected")
    [burst] = detect_burst(hourly, MeterData({"water.flow": flow}, [event]), RULES)
    assert (burst.start, burst.end) == (event.ts, T0 + timedelta(hours=3))


def test_burst_event_lasts_while_the_flow_is_high() -> None:
    flow = flow_series([0, 1600, 1600, 10])
    data = MeterData(
        {"water.flow": flow}, [EventRecord(at(0) + timedelta(minutes=5), "burst_detected")]
    )
    [burst] = detect_burst(WATER, data, RULES)
    assert burst.start == at(0) + timedelta(minutes=5)
    assert burst.end == at(2)


# --------------------------------------------------------------------------- reverse flow


def test_reverse_register_advancing_5_litres_in_an_hour() -> None:
    reverse = [Sample(at(k), 1.0 + max(0, k - 2) * 0.0075) for k in range(8)]
    reverse += [Sample(at(k), reverse[-1].value) for k in range(8, 12)]
    [ep] = detect_reverse_flow(WATER, MeterData({"24.2.2": reverse}), RULES)
    assert (ep.start, ep.end) == (at(2), at(7))


def test_a_litre_of_reverse_flow_is_not_enough() -> None:
    reverse = [Sample(at(k), 1.0 + (0.001 if k >= 3 else 0.0)) for k in range(8)]
    assert detect_reverse_flow(WATER, MeterData({"24.2.2": reverse}), RULES) == []


def test_negative_flow_for_15_minutes() -> None:
    flow = flow_series([5, -30, -30, 0])
    [ep] = detect_reverse_flow(WATER, MeterData({"water.flow": flow}), RULES)
    assert (ep.start, ep.end) == (at(1), at(2))
    assert (
        detect_reverse_flow(WATER, MeterData({"water.flow": flow_series([5, -30, 0])}), RULES) == []
    )


def test_export_is_reverse_flow_only_where_not_allowed() -> None:
    export = [Sample(at(k), 10.0 + k * 0.25) for k in range(6)]
    data = MeterData({"2.8.0": export})
    assert detect_reverse_flow(ELEC, data, RULES)
    allowed = MeterProfile("e", "electricity", 900, export_allowed=True)
    assert detect_reverse_flow(allowed, data, RULES) == []


def test_reverse_flow_event() -> None:
    data = MeterData({}, [EventRecord(at(3), "reverse_flow")])
    [ep] = detect_reverse_flow(WATER, data, RULES)
    assert ep.start == at(3)


# --------------------------------------------------------------------------- stuck register


def test_register_frozen_while_power_flows_is_stuck() -> None:
    reg = [Sample(at(k), 500.0 + min(k, 4) * 0.3) for k in range(40)]  # frozen from k=4
    reg.append(Sample(at(40), 512.0))
    power = [Sample(at(k), 1.2) for k in range(41)]
    [ep] = detect_stuck_register(ELEC, MeterData({"1.8.0": reg, "1.7.0": power}), RULES)
    assert (ep.start, ep.end) == (at(4), at(40))


def test_register_unchanged_without_consumption_is_not_stuck() -> None:
    reg = [Sample(at(k), 500.0) for k in range(40)]
    power = [Sample(at(k), 0.0 if k % 2 else -2.0) for k in range(40)]  # off, or exporting
    assert detect_stuck_register(ELEC, MeterData({"1.8.0": reg, "1.7.0": power}), RULES) == []


def test_water_register_stuck_needs_20_litres() -> None:
    reg = [Sample(at(k), 80.0) for k in range(30)]
    little = [Sample(at(k), 2.0) for k in range(30)]  # 2 l/h × 7 h = 14 l
    more = [Sample(at(k), 60.0) for k in range(30)]
    assert (
        detect_stuck_register(WATER, MeterData({"24.2.1": reg, "water.flow": little}), RULES) == []
    )
    assert detect_stuck_register(WATER, MeterData({"24.2.1": reg, "water.flow": more}), RULES)


# --------------------------------------------------------------------------- rollback


def test_register_going_down_is_a_rollback() -> None:
    reg = [Sample(at(0), 1000.0), Sample(at(1), 1000.5), Sample(at(2), 950.5), Sample(at(3), 951)]
    [ep] = detect_rollback(ELEC, MeterData({"1.8.0": reg}), RULES)
    assert (ep.start, ep.end) == (at(1), at(2))
    assert ep.evidence["drop"] == 50.0


def test_rollover_near_capacity_is_not_a_rollback() -> None:
    reg = [Sample(at(0), 99999.2), Sample(at(1), 99999.9), Sample(at(2), 0.4), Sample(at(3), 1.1)]
    assert detect_rollback(ELEC, MeterData({"1.8.0": reg}), RULES) == []
    # With a registered capacity of 1e6 the same drop is a rollback.
    six = MeterProfile("e", "electricity", 900, register_max=1e6)
    assert detect_rollback(six, MeterData({"1.8.0": reg}), RULES)


def test_capacity_is_the_next_power_of_ten() -> None:
    assert register_capacity(99998.0, None) == 100000.0
    assert register_capacity(100000.0, None) == 1000000.0
    assert register_capacity(5.0, 9999.0) == 9999.0


def test_drop_within_resolution_is_ignored() -> None:
    reg = [Sample(at(0), 10.001), Sample(at(1), 10.0)]
    assert detect_rollback(ELEC, MeterData({"1.8.0": reg}), RULES) == []


def arrived(k: int, value: float, ts: datetime, seconds: float = 2.0) -> Sample:
    """Reading ``k`` of a live meter: sent at its true time at(k), stamped ``ts``."""
    return Sample(ts, value, received_at=at(k) + timedelta(seconds=seconds))


def test_a_clock_set_back_past_earlier_readings_is_not_a_rollback() -> None:
    # Live every 15 min; from k=4 the clock is 20 min slow, so reading 4 (stamped 00:40) sorts
    # before reading 3 (00:45) with a higher value. The meter read them in order: no rollback.
    reg = [arrived(k, 100.0 + k, at(k)) for k in range(4)]
    reg += [arrived(k, 100.0 + k, at(k) - timedelta(minutes=20)) for k in range(4, 8)]
    reg.sort(key=lambda s: s.ts)
    assert [s.value for s in reg] == [100, 101, 102, 104, 103, 105, 106, 107]
    assert detect_rollback(ELEC, MeterData({"1.8.0": reg}), RULES) == []


def test_a_clock_set_right_after_running_hours_fast_is_not_a_rollback() -> None:
    # Stamped three hours ahead until k=6, then right: in data time the readings sent since
    # come first, then those sent while fast, with lower values.
    fast = [arrived(k, 100.0 + k, at(k) + timedelta(hours=3)) for k in range(6)]
    right = [arrived(k, 100.0 + k, at(k)) for k in range(6, 9)]
    assert detect_rollback(ELEC, MeterData({"1.8.0": right + fast}), RULES) == []


def test_a_rollback_delivered_newest_first_is_still_a_rollback() -> None:
    values = [100.0, 101.0, 50.0, 51.0, 52.0, 53.0, 54.0, 55.0]
    # Sent in windows of four, newest first: 3 2 1 0, then 7 6 5 4.
    order = [3, 2, 1, 0, 7, 6, 5, 4]
    reg = [
        Sample(at(k), values[k], received_at=at(8) + timedelta(seconds=order.index(k)))
        for k in range(8)
    ]
    [ep] = detect_rollback(ELEC, MeterData({"1.8.0": reg}), RULES)
    assert (ep.start, ep.end) == (at(1), at(2))
    # While only the first window has arrived the drop is not judged yet.
    assert detect_rollback(ELEC, MeterData({"1.8.0": reg[:4]}), RULES) == []


# --------------------------------------------------------------------------- comms loss


def live(k: int, delay_s: float = 5.0) -> Sample:
    return Sample(at(k), 1.0 + k, received_at=at(k) + timedelta(seconds=delay_s))


def test_gap_in_data_time_is_comms_loss() -> None:
    samples = [live(k) for k in range(4)] + [live(k) for k in range(10, 12)]
    [ep] = detect_comms_loss(ELEC, MeterData({"1.8.0": samples}), RULES)
    assert (ep.start, ep.end) == (at(3), at(10))


def test_45_minute_gap_is_not_comms_loss() -> None:
    samples = [live(k) for k in range(4)] + [live(k) for k in range(7, 9)]
    assert detect_comms_loss(ELEC, MeterData({"1.8.0": samples}), RULES) == []


def test_silence_of_a_live_meter_opens_at_once_and_the_backlog_closes_it() -> None:
    samples = [live(k) for k in range(4)]
    data = MeterData({"1.8.0": samples})
    now = at(3) + timedelta(hours=2)
    [ep] = detect_comms_loss(ELEC, data, RULES, now)
    assert (ep.start, ep.end) == (at(3), None)
    # The meter comes back at k=20 and delivers its backlog (k=4..19) late, then k=20 live.
    back = at(20) + timedelta(seconds=3)
    backlog = [Sample(at(k), 1.0 + k, received_at=back) for k in range(4, 20)]
    data = MeterData({"1.8.0": [*samples, *backlog, live(20), live(21)]})
    [ep] = detect_comms_loss(ELEC, data, RULES, at(21))
    assert (ep.start, ep.end) == (at(3), at(20))


def test_backfill_that_all_arrives_late_is_not_comms_loss() -> None:
    late = at(500)
    samples = [Sample(at(k), 1.0 + k, received_at=late) for k in range(96)]
    assert detect_comms_loss(ELEC, MeterData({"1.8.0": samples}), RULES, at(600)) == []


def test_a_clock_jumping_hours_ahead_is_no_comms_loss() -> None:
    # Live every 15 min; from k=4 stamped three hours ahead: a hole in data time, but the meter
    # never stopped delivering.
    samples = [live(k) for k in range(4)]
    samples += [arrived(k, 1.0 + k, at(k) + timedelta(hours=3)) for k in range(4, 8)]
    assert detect_comms_loss(ELEC, MeterData({"1.8.0": samples}), RULES, at(8)) == []
    # Set right at k=8: the readings sent since sort before those sent while fast.
    samples += [live(k) for k in range(8, 10)]
    assert detect_comms_loss(ELEC, MeterData({"1.8.0": samples}), RULES, at(10)) == []


def test_a_fast_clock_that_falls_silent_is_comms_loss() -> None:
    ahead = timedelta(minutes=10)
    kept = [*range(4), *range(10, 12)]  # readings 4-9 lost: silent for 1 h 45 min
    samples = [arrived(k, 1.0 + k, at(k) + ahead) for k in kept]
    [ep] = detect_comms_loss(ELEC, MeterData({"1.8.0": samples}), RULES, at(12))
    assert (ep.start, ep.end) == (at(3) + ahead, at(10) + ahead)


# --------------------------------------------------------------------------- clock drift


def test_clock_off_on_three_live_messages_until_adjusted() -> None:
    samples = [live(k) for k in range(3)]
    # From k=3 the meter clock is 10 min ahead: ts = true + 600 s, received at true time.
    samples += [
        Sample(at(k) + timedelta(seconds=600), 1.0 + k, received_at=at(k) + timedelta(seconds=2))
        for k in range(3, 8)
    ]
    events = [EventRecord(at(8), "clock_adjusted")]
    samples += [live(k) for k in range(8, 10)]
    [ep] = detect_clock_drift(ELEC, MeterData({"1.8.0": samples}, events), RULES)
    assert ep.start == at(3) + timedelta(seconds=2)
    assert ep.end == at(8)


def test_a_clock_hours_fast_is_drift_however_far_ahead() -> None:
    # Local time (UTC+2) sent as UTC: every live message is stamped two hours ahead of its
    # arrival, far beyond one interval; the clock is set right at k=6.
    fast = timedelta(hours=2)
    samples = [
        Sample(at(k) + fast, 1.0 + k, received_at=at(k) + timedelta(seconds=2)) for k in range(6)
    ]
    samples += [live(k) for k in range(6, 8)]
    events = [EventRecord(at(6), "clock_adjusted")]
    [ep] = detect_clock_drift(ELEC, MeterData({"1.8.0": samples}, events), RULES)
    assert (ep.start, ep.end) == (at(0) + timedelta(seconds=2), at(6))


def test_a_slow_clock_is_drift_only_within_an_interval_of_the_tolerance() -> None:
    def behind(seconds: float) -> list[Sample]:
        return [
            Sample(
                at(k) - timedelta(seconds=seconds), 1.0, received_at=at(k) + timedelta(seconds=1)
            )
            for k in range(5)
        ]

    [ep] = detect_clock_drift(ELEC, MeterData({"1.8.0": behind(600)}), RULES)
    assert (ep.start, ep.end) == (at(0) + timedelta(seconds=1), None)
    # Two hours behind on a 15-minute meter: indistinguishable from deliveries two hours late.
    assert detect_clock_drift(ELEC, MeterData({"1.8.0": behind(7200)}), RULES) == []


def test_two_drifted_messages_or_late_backfill_are_not_drift() -> None:
    samples = [Sample(at(k) + timedelta(seconds=600), 1.0, received_at=at(k)) for k in range(2)] + [
        live(k) for k in range(2, 5)
    ]
    assert detect_clock_drift(ELEC, MeterData({"1.8.0": samples}), RULES) == []
    backfill = [Sample(at(k), 1.0, received_at=at(100) + timedelta(seconds=k)) for k in range(10)]
    assert detect_clock_drift(ELEC, MeterData({"1.8.0": backfill}), RULES) == []


# --------------------------------------------------------------------------- voltage


def volts(values: list[float]) -> MeterData:
    return MeterData({"32.7.0": [Sample(at(k), v) for k, v in enumerate(values)]})


def test_three_low_readings_are_a_sag() -> None:
    [ep] = detect_voltage(ELEC, volts([230, 200, 201, 199, 229]), RULES)
    assert (ep.kind, ep.start, ep.end) == (AlertKind.VOLTAGE_SAG, at(1), at(3))
    assert detect_voltage(ELEC, volts([230, 200, 201, 229, 200]), RULES) == []


def test_three_high_readings_on_any_phase_are_a_swell() -> None:
    data = MeterData(
        {
            "32.7.0": [Sample(at(k), 230.0) for k in range(5)],
            "52.7.0": [Sample(at(k), 260.0 if k else 230.0) for k in range(5)],
        }
    )
    [ep] = detect_voltage(ELEC, data, RULES)
    assert (ep.kind, ep.start, ep.end) == (AlertKind.VOLTAGE_SWELL, at(1), None)


# --------------------------------------------------------------------------- tamper


def test_cover_open_until_closed_and_magnet_until_resolved() -> None:
    events = [
        EventRecord(at(1), "tamper_cover_open"),
        EventRecord(at(3), "tamper_cover_closed"),
        EventRecord(at(5), "magnetic_field"),
        EventRecord(at(9), "magnetic_field"),
    ]
    eps = detect_tamper(MeterData({}, events))
    cover = [e for e in eps if e.kind is AlertKind.TAMPER_COVER]
    magnet = [e for e in eps if e.kind is AlertKind.TAMPER_MAGNETIC]
    assert [(e.start, e.end) for e in cover] == [(at(1), at(3))]
    assert [(e.start, e.end) for e in magnet] == [(at(5), None)]
    resolved = detect_tamper(MeterData({}, events), {AlertKind.TAMPER_MAGNETIC: [at(7)]})
    magnet = [e for e in resolved if e.kind is AlertKind.TAMPER_MAGNETIC]
    assert [(e.start, e.end) for e in magnet] == [(at(5), at(7)), (at(9), None)]


# --------------------------------------------------------------------------- whole meter


def test_a_normal_water_meter_raises_nothing() -> None:
    flows = quiet_day_pattern(4)
    reg = register(flows)
    flow = [Sample(s.ts, f * 4.0) for s, f in zip(reg[1:], flows, strict=True)]
    rev = [Sample(s.ts, 0.0) for s in reg]
    data = MeterData({"24.2.1": reg, "water.flow": flow, "24.2.2": rev})
    assert evaluate(WATER, data, RULES) == []


def test_reconcile_is_idempotent_and_withdraws_what_data_disproves() -> None:
    samples = [live(k) for k in range(4)] + [live(k) for k in range(10, 12)]
    [gap] = evaluate(ELEC, MeterData({"1.8.0": samples}), RULES)
    plan = reconcile([], [gap], since=T0)
    assert list(plan.opens) == [gap]
    stored = StoredAlert(1, gap.kind, gap.start, gap.end, dict(gap.evidence))
    assert reconcile([stored], [gap], since=T0).empty
    # Late readings fill the gap: the alert was never true.
    filled = sorted(samples + [live(k) for k in range(4, 10)], key=lambda s: s.ts)
    episodes = evaluate(ELEC, MeterData({"1.8.0": filled}), RULES)
    plan = reconcile([stored], episodes, since=T0)
    assert list(plan.withdrawals) == [stored]
    assert not plan.opens


def test_reconcile_moves_the_start_of_a_matching_alert_instead_of_opening_another() -> None:

    stored = StoredAlert(7, AlertKind.LEAK, at(10), None, {"rule": "continuous_flow"})
    earlier = Episode(AlertKind.LEAK, at(4), None, {"rule": "continuous_flow"})
    plan = reconcile([stored], [earlier], since=T0)
    assert not plan.opens and not plan.withdrawals
    assert [(a.id, e.start) for a, e in plan.updates] == [(7, at(4))]
