"""Every fault kind shows in the data as documented, and in the ground truth."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

import pytest

from firmware_sim.device import Device
from firmware_sim.faults import Fault, FaultKind, FaultRecord
from firmware_sim.identity import Utility
from protocols.errors import PayloadError
from protocols.telemetry import decode_json_telemetry
from protocols.topics import TopicKind
from tests.firmware_sim.helpers import START, make_device

H = timedelta(hours=1)


@dataclass
class Run:
    device: Device
    telemetry: list[bytes] = field(default_factory=list)
    events: list[dict[str, object]] = field(default_factory=list)
    records: list[FaultRecord] = field(default_factory=list)

    def readings(self) -> dict[datetime, Mapping[str, float]]:
        found: dict[datetime, Mapping[str, float]] = {}
        for body in self.telemetry:
            try:
                rows = decode_json_telemetry(body, meter_id="x", now=START + 10 * H)
            except PayloadError:
                continue
            for row in rows:
                found.setdefault(row.ts, {})
                found[row.ts] = {**found[row.ts], row.channel: row.value}  # type: ignore[dict-item]
        return found

    def kinds(self) -> list[str]:
        return [str(e["type"]) for e in self.events]


def run(
    utility: Utility,
    *faults: tuple[FaultKind, timedelta, timedelta, dict[str, float]],
    hours: int = 8,
) -> Run:
    scheduled = [
        Fault("m", kind, START + start, START + start + length, MappingProxyType(params))
        for kind, start, length, params in faults
    ]
    device = make_device(utility, prepaid=False, faults=[])
    device.meter.pending = sorted(
        (
            Fault(device.meter_id, f.kind, f.start, f.end, f.params)
            for f in scheduled
            if f.kind is not FaultKind.REGISTER_ROLLOVER
        ),
        key=lambda f: f.start,
    )
    result = Run(device)
    for hour in range(1, hours + 1):
        out = device.advance(START + hour * H)
        result.records += out.records
        for msg in out.messages:
            if msg.kind is TopicKind.TELEMETRY:
                result.telemetry.append(msg.payload)
            elif msg.kind is TopicKind.EVENTS:
                body = json.loads(msg.payload)
                result.events += body if isinstance(body, list) else [body]
    result.records += device.finish(START + hours * H).records
    return result


def _record(r: Run, kind: FaultKind) -> FaultRecord:
    (record,) = [x for x in r.records if x.kind is kind]
    return record


def test_leak_is_continuous_low_flow_in_a_quiet_night() -> None:
    r = run(Utility.WATER, (FaultKind.LEAK, 1 * H, 4 * H, {"rate_lph": 12.0}))
    vol = {ts: v["24.2.1"] for ts, v in r.readings().items()}
    # Households draw nothing 01:30-05:00; the leak adds 12 l/h: 2.5 h -> 30 litres.
    assert vol[START + 4.5 * H] - vol[START + 2 * H] == pytest.approx(0.030, abs=0.0015)
    assert r.readings()[START + 3 * H]["water.flow"] == 12.0
    record = _record(r, FaultKind.LEAK)
    assert (record.start, record.end, record.completed) == (START + H, START + 5 * H, True)


def test_burst_reverse_flow_and_magnet() -> None:
    r = run(
        Utility.WATER,
        (FaultKind.BURST, 2 * H, 0.5 * H, {"rate_lph": 1500.0}),
        (FaultKind.REVERSE_FLOW, 3 * H, H, {"rate_lph": 30.0}),
    )
    data = r.readings()
    assert data[START + 2.5 * H]["24.2.1"] - data[START + 2 * H]["24.2.1"] == pytest.approx(
        0.75, abs=0.002
    )  # 1500 l/h for half an hour
    assert data[START + 3.5 * H]["water.flow"] == -30.0
    assert data[START + 4 * H]["24.2.2"] - data[START + 3 * H]["24.2.2"] == pytest.approx(0.030)
    assert "burst_detected" in r.kinds() and "reverse_flow" in r.kinds()
    assert {x.kind for x in r.records} == {FaultKind.BURST, FaultKind.REVERSE_FLOW}

    m = run(
        Utility.WATER,
        (FaultKind.LEAK, 1 * H, 4 * H, {"rate_lph": 20.0}),
        (FaultKind.TAMPER_MAGNETIC, 2 * H, 2 * H, {"under_registration": 0.5}),
    )
    vol = {ts: v["24.2.1"] for ts, v in m.readings().items()}
    # A magnet halves registration: 20 l/h registers as 10 l/h for 2 h.
    assert vol[START + 4 * H] - vol[START + 2 * H] == pytest.approx(0.020, abs=0.0015)
    assert "magnetic_field" in m.kinds()


def test_stuck_rollback_and_rollover_registers() -> None:
    r = run(Utility.ELECTRICITY, (FaultKind.STUCK_REGISTER, 2 * H, 3 * H, {}), hours=7)
    data = r.readings()
    stuck = {data[START + 2 * H + k * timedelta(minutes=15)]["1.8.0"] for k in range(1, 12)}
    assert len(stuck) == 1  # frozen while the load (1.7.0) is non-zero
    assert any(data[START + 2 * H + k * timedelta(minutes=15)]["1.7.0"] > 0 for k in range(1, 12))
    assert data[START + 6 * H]["1.8.0"] > stuck.pop()
    _record(r, FaultKind.STUCK_REGISTER)

    r = run(
        Utility.ELECTRICITY, (FaultKind.REGISTER_ROLLBACK, 2 * H, timedelta(0), {"amount": 50.0})
    )
    data = r.readings()
    drop = data[START + 2 * H]["1.8.0"] - data[START + 2.25 * H]["1.8.0"]
    assert 45.0 < drop <= 50.0  # 50 kWh back, minus 15 minutes of consumption
    _record(r, FaultKind.REGISTER_ROLLBACK)

    device = make_device(
        Utility.ELECTRICITY,
        prepaid=False,
        faults=[
            Fault(
                "x",
                FaultKind.REGISTER_ROLLOVER,
                START,
                START,
                MappingProxyType({"max": 100000.0, "lead": 0.5}),
            )
        ],
    )
    out = device.advance(START + 8 * H)
    values = [
        json.loads(m.payload)["values"]["1.8.0"]
        for m in out.messages
        if m.kind is TopicKind.TELEMETRY
    ]
    assert values[0] >= 99999.5
    wrap = next(i for i in range(1, len(values)) if values[i] < values[i - 1])
    assert values[wrap] < 5.0  # wrapped to small values, not a tamper-style drop
    (record,) = out.records
    assert record.kind is FaultKind.REGISTER_ROLLOVER and record.start == record.end


def test_comms_loss_then_backlog() -> None:
    r = run(Utility.ELECTRICITY, (FaultKind.COMMS_LOSS, 2 * H, 3 * H, {}), hours=7)
    stamps = [
        sorted({row.ts for row in decode_json_telemetry(b, meter_id="x", now=START + 10 * H)})
        for b in r.telemetry
    ]
    # Singles before, then one backlog message carrying every reading from the silent window.
    backlog = max(stamps, key=len)
    assert backlog[0] == START + 2 * H + timedelta(minutes=15)
    assert backlog[-1] >= START + 5 * H
    assert len(backlog) >= 12
    all_stamps = sorted(ts for batch in stamps for ts in batch)  # each exactly once
    assert all_stamps == [START + k * timedelta(minutes=15) for k in range(1, 29)]
    _record(r, FaultKind.COMMS_LOSS)


def test_clock_drift_duplicates_and_out_of_order() -> None:
    r = run(
        Utility.ELECTRICITY, (FaultKind.CLOCK_DRIFT, 2 * H, 2 * H, {"offset_s": 600.0}), hours=5
    )
    stamps = sorted(r.readings())
    drifted = [ts for ts in stamps if ts.minute % 15 == 10]
    assert len(drifted) == 8  # 2 h of 15-min readings stamped 10 min fast
    assert "clock_adjusted" in r.kinds()

    d = run(Utility.ELECTRICITY, (FaultKind.DUPLICATE, 2 * H, H, {"copies": 2}), hours=4)
    assert len(d.telemetry) == 16 + 4  # 16 readings, the 4 in the window twice
    assert len(set(d.telemetry)) == 16

    o = run(Utility.ELECTRICITY, (FaultKind.OUT_OF_ORDER, 2 * H, H, {"window": 4}), hours=4)
    order = [decode_json_telemetry(b, meter_id="x", now=START + 9 * H)[0].ts for b in o.telemetry]
    assert order != sorted(order) and sorted(order) == sorted(set(order))
    assert order[8:12] == sorted(order[8:12], reverse=True)


def test_voltage_tamper_cover_and_malformed() -> None:
    r = run(
        Utility.ELECTRICITY,
        (FaultKind.VOLTAGE_SAG, 1 * H, H, {}),
        (FaultKind.VOLTAGE_SWELL, 3 * H, H, {}),
        (FaultKind.TAMPER_COVER, 5 * H, H, {}),
        (FaultKind.MALFORMED_PAYLOAD, 6 * H, H, {}),
    )
    data = r.readings()
    assert data[START + 1.5 * H]["32.7.0"] < 195.0  # 0.8 x ~230 V
    assert data[START + 3.5 * H]["32.7.0"] > 253.0  # 1.15 x ~230 V
    assert 215.0 < data[START + 2.5 * H]["32.7.0"] < 245.0
    assert r.kinds().count("tamper_cover_open") == 1 and "tamper_cover_closed" in r.kinds()
    bad = 0
    for body in r.telemetry:
        try:
            decode_json_telemetry(body, meter_id="x", now=START + 9 * H)
        except PayloadError:
            bad += 1
    assert bad == 4  # one malformed message per reading during the hour
    assert len(r.records) == 4
