"""The pure meter model: determinism, physical plausibility, prepaid supply control."""

from __future__ import annotations

import itertools
from datetime import timedelta

from firmware_sim.fleet import FleetSpec, build_fleet
from firmware_sim.identity import Utility, luhn_digit
from firmware_sim.meter import Relay, Valve
from protocols.events import EventType
from tests.firmware_sim.helpers import START, make_device
from tokens.meter_number import MeterNumber


def _day_of_readings(seed: int) -> list[tuple[str, str, dict[str, float]]]:
    devices = build_fleet(FleetSpec(seed=seed, meters=6), START)
    rows = []
    for device in devices:
        # Step in uneven chunks: results must not depend on how the shell slices time.
        for hours in (1, 5, 18):
            result = device.meter.step(device.meter.t + timedelta(hours=hours))
            rows += [(device.meter_id, r.ts.isoformat(), dict(r.values)) for r in result.readings]
    return rows


def test_same_seed_same_readings_different_seed_different() -> None:
    first, again, other = _day_of_readings(5), _day_of_readings(5), _day_of_readings(6)
    assert len(first) == 6 * 96  # 24 h of 15-minute readings per meter
    assert first == again
    assert [v for _, _, v in first] != [v for _, _, v in other]


def test_identity_numbers_are_valid_sts_numbers() -> None:
    for device in build_fleet(FleetSpec(seed=3, meters=5), START):
        ident = device.meter.identity
        assert len(ident.meter_id) == 11 and len(ident.pan) == 18
        # Parsing validates both Luhn check digits.
        assert MeterNumber.from_pan(ident.pan).drn == ident.meter_id
        assert luhn_digit(ident.meter_id[:-1]) == ident.meter_id[-1]


def test_electricity_registers_follow_power() -> None:
    device = make_device(Utility.ELECTRICITY, prepaid=False)
    readings = device.meter.step(START + timedelta(days=1)).readings
    imports = [r.values["1.8.0"] for r in readings]
    assert all(b >= a for a, b in itertools.pairwise(imports))
    daily = imports[-1] - imports[0]
    assert 3.0 < daily < 80.0  # a household uses a few to tens of kWh a day
    for r in readings:
        assert 195.0 < r.values["32.7.0"] < 253.0  # 230 V +10 % / -15 %
        assert 49.8 < r.values["14.7.0"] < 50.2
        # I = P / (V cos phi) with cos phi = 0.95
        p_w = abs(r.values["21.7.0"]) * 1000
        assert abs(r.values["31.7.0"] - p_w / (r.values["32.7.0"] * 0.95)) < 0.05
    # Evening peak (18-20 h) draws clearly more than the small hours (2-4 h).
    by_hour = {r.ts.hour: r.values["1.7.0"] for r in readings if r.ts.minute == 0}
    assert by_hour[19] + by_hour[18] > by_hour[3] + by_hour[2]


def test_water_nights_are_quiet() -> None:
    totals_day = totals_night = 0.0
    for index in range(10):
        device = make_device(Utility.WATER, prepaid=False, index=index)
        readings = {
            r.ts: r.values["24.2.1"] for r in device.meter.step(START + timedelta(days=1)).readings
        }
        night = (
            readings[START + timedelta(hours=4, minutes=30)] - readings[START + timedelta(hours=2)]
        )
        day = readings[START + timedelta(hours=23)] - readings[START + timedelta(hours=5)]
        totals_night += night
        totals_day += day
    # No draws start between 01:00 and 05:00 and none lasts an hour: nights are exactly still.
    assert totals_night == 0.0
    # ~100-250 litres per person per day; 10 households use at least a cubic metre.
    assert totals_day > 1.0


def test_prepaid_electricity_disconnects_at_zero_credit() -> None:
    device = make_device(Utility.ELECTRICITY, credit=6.0)  # credit_low fires below 5 kWh
    meter = device.meter
    result = meter.step(START + timedelta(days=3))
    kinds = [e.type for e in result.events]
    assert EventType.CREDIT_LOW in kinds
    assert EventType.CREDIT_EXHAUSTED in kinds
    assert EventType.RELAY_OPENED in kinds
    assert meter.relay is Relay.DISCONNECTED
    last = result.readings[-1].values
    assert last["credit"] == 0.0 and last["96.3.10"] == 0.0 and last["1.7.0"] == 0.0
    # Consumption stopped: the register advanced by at most the 6 kWh of credit.
    assert last["1.8.0"] - result.readings[0].values["1.8.0"] <= 6.0 + 1e-3
    later = meter.step(START + timedelta(days=4)).readings
    assert later[-1].values["1.8.0"] == last["1.8.0"]


def test_prepaid_water_restricts_to_trickle_at_zero_credit() -> None:
    device = make_device(Utility.WATER, credit=0.05)
    meter = device.meter
    result = meter.step(START + timedelta(days=1))
    assert EventType.VALVE_RESTRICTED in [e.type for e in result.events]
    assert meter.valve is Valve.RESTRICTED
    assert result.readings[-1].values["24.4.0"] == 2.0
    assert all(r.values["water.flow"] <= meter.config.trickle_lph for r in result.readings[-40:])
