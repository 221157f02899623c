"""Scenario files, ground truth JSON Lines, and the ``firmware-sim`` command line."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from firmware_sim.cli import main
from firmware_sim.faults import FaultKind
from firmware_sim.fleet import FleetSpec, fleet_identities
from firmware_sim.identity import Utility
from firmware_sim.scenario import load_scenario, parse_scenario
from protocols.errors import UsageError
from tests.firmware_sim.helpers import START


def test_scenario_selectors_and_times(tmp_path: Path) -> None:
    idents = fleet_identities(FleetSpec(seed=2, meters=12))
    water = [i for i in idents if i.utility is Utility.WATER]
    scenario = parse_scenario(
        {
            "faults": [
                {"meter": 0, "kind": "tamper_cover", "start": "+2h", "duration": "15m"},
                {
                    "meter": water[0].meter_id,
                    "kind": "leak",
                    "start": "2026-01-05T01:00:00Z",
                    "duration": 7200,
                    "params": {"rate_lph": 8},
                },
                {
                    "meter": {"utility": "water", "count": 2, "skip": 1},
                    "kind": "burst",
                    "start": "1d",
                    "duration": "30m",
                },
            ]
        }
    )
    faults = scenario.resolve(idents, START)
    first = faults[idents[0].meter_id][0]
    assert (first.kind, first.start, first.end) == (
        FaultKind.TAMPER_COVER,
        START + timedelta(hours=2),
        START + timedelta(hours=2.25),
    )
    (leak,) = [f for f in faults[water[0].meter_id] if f.kind is FaultKind.LEAK]
    assert leak.start == START + timedelta(hours=1) and leak.params["rate_lph"] == 8
    bursts = [f for fs in faults.values() for f in fs if f.kind is FaultKind.BURST]
    assert sorted(f.meter_id for f in bursts) == sorted(i.meter_id for i in water[1:3])
    with pytest.raises(UsageError):
        parse_scenario([{"meter": 0, "kind": "gremlins"}]).resolve(idents, START)
    elec = next(i for i in idents if i.utility is Utility.ELECTRICITY)
    with pytest.raises(UsageError, match="does not apply"):
        parse_scenario([{"meter": elec.meter_id, "kind": "leak"}]).resolve(idents, START)
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("faults:\n  - {meter: 1, kind: comms_loss, start: 1h, duration: 2h}\n")
    assert load_scenario(yaml_file).entries[0]["kind"] == "comms_loss"


def test_run_writes_ground_truth(tmp_path: Path, topic_prefix: str) -> None:
    scenario = tmp_path / "faults.json"
    scenario.write_text(
        json.dumps(
            {
                "start": "2026-01-05T00:00:00Z",
                "faults": [
                    {"meter": 0, "kind": "tamper_magnetic", "start": "+1h", "duration": "1h"},
                    {"meter": 1, "kind": "duplicate", "start": "+30m", "duration": "1h"},
                    {"meter": 2, "kind": "stuck_register", "start": "+1d", "duration": "1h"},
                ],
            }
        )
    )
    truth = tmp_path / "truth.jsonl"
    seed = 90 + uuid.uuid4().int % 9
    code = main(
        [
            "run",
            "--meters",
            "3",
            "--seed",
            str(seed),
            "--speed",
            "36000",
            "--no-cap",
            "--scenario",
            str(scenario),
            "--truth",
            str(truth),
            "--duration",
            "1.5",
            "--prefix",
            topic_prefix,
            "--session-expiry",
            "60",
            "--log-level",
            "WARNING",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    by_kind = {line["kind"]: line for line in lines}
    # 1.5 s at 36000x is ~15 h of simulated time: the first two faults completed, the third
    # (a day in) never started and is therefore not in the ground truth.
    assert set(by_kind) == {"tamper_magnetic", "duplicate"}
    assert by_kind["tamper_magnetic"]["start"] == "2026-01-05T01:00:00.000Z"
    assert by_kind["tamper_magnetic"]["end"] == "2026-01-05T02:00:00.000Z"
    assert by_kind["duplicate"]["completed"] is True
