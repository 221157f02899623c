"""Labelled fleets: the plan covers every kind where the data can show it; generation is
deterministic and its ground truth matches the plan."""

from __future__ import annotations

from datetime import UTC, datetime

from firmware_sim.faults import FaultKind, FaultRecord
from firmware_sim.labelled import generate, plan_labelled_fleet
from protocols.binary import decode_frame
from protocols.topics import Topics

START = datetime(2026, 3, 1, tzinfo=UTC)


def test_plan_places_each_kind_on_meters_that_can_show_it() -> None:
    fleet = plan_labelled_fleet(seed=3, meters=120, days=8, start=START, per_kind=2)
    payment = {r.meter_id: r.payment for r in fleet.registry}
    export = {r.meter_id: r.export_allowed for r in fleet.registry}
    kinds = {f.kind for f in fleet.faults}
    assert FaultKind.CLOCK_DRIFT not in kinds
    assert kinds >= {FaultKind.LEAK, FaultKind.BURST, FaultKind.COMMS_LOSS, FaultKind.DUPLICATE}
    for fault in fleet.faults:
        assert fault.start > START and fault.end < fleet.end
        if fault.kind in (FaultKind.LEAK, FaultKind.BURST, FaultKind.STUCK_REGISTER):
            assert payment[fault.meter_id] == "postpaid"
        if fault.kind is FaultKind.REVERSE_FLOW:
            assert not export[fault.meter_id]
    assert len({f.meter_id for f in fleet.faults}) == len(fleet.faults)  # one fault per meter


def test_generation_is_deterministic_and_labels_every_fault() -> None:
    fleet = plan_labelled_fleet(seed=3, meters=120, days=8, start=START, per_kind=2)
    first = list(generate(fleet, Topics("")))
    again = list(generate(fleet, Topics("")))
    assert first == again
    records = [r for r in first if isinstance(r, FaultRecord)]
    assert sorted(
        (r.meter_id, r.kind) for r in records if r.kind is not FaultKind.REGISTER_ROLLOVER
    ) == sorted(
        (f.meter_id, f.kind) for f in fleet.faults if f.kind is not FaultKind.REGISTER_ROLLOVER
    )
    # A comms loss with backlog 0 loses the outage's readings: none is ever sent.
    loss = next(f for f in fleet.faults if f.kind is FaultKind.COMMS_LOSS)
    stamps = [
        reading.ts
        for item in first
        if isinstance(item, tuple) and item[0] == f"meters/{loss.meter_id}/telemetry"
        for reading in decode_frame(item[1], meter_id=loss.meter_id, now=fleet.end)
    ]
    assert stamps
    assert [t for t in stamps if loss.start < t < loss.end] == []
