"""Scoring alerts against ground truth on plain values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.detection.score import Labelled, ScoreError, parse_truth, render, score

T0 = datetime(2026, 1, 5, tzinfo=UTC)
H = timedelta(hours=1)


def by_kind(faults: list[Labelled], alerts: list[Labelled]) -> dict[str, tuple[int, int, int]]:
    return {
        s.kind: (s.true_positives, s.false_positives, s.false_negatives)
        for s in score(faults, alerts)
    }


def test_a_fault_is_found_by_an_overlapping_alert_of_its_meter_and_kind() -> None:
    faults = [Labelled("m1", "burst", T0, T0 + 2 * H), Labelled("m2", "burst", T0, T0 + H)]
    alerts = [
        Labelled("m1", "burst", T0 + 3 * H - timedelta(minutes=1), None),  # within the 1 h delay
        Labelled("m2", "leak", T0, T0 + H),  # wrong kind
        Labelled("m3", "burst", T0, T0 + H),  # wrong meter
    ]
    result = by_kind(faults, alerts)
    assert result["burst"] == (1, 1, 1)
    assert result["leak"] == (0, 1, 0)


def test_leak_is_allowed_26_hours_of_delay() -> None:
    faults = [Labelled("w", "leak", T0, T0 + 10 * H)]
    late = [Labelled("w", "leak", T0 + 35 * H, None)]
    too_late = [Labelled("w", "leak", T0 + 37 * H, None)]
    assert by_kind(faults, late)["leak"] == (1, 0, 0)
    assert by_kind(faults, too_late)["leak"] == (0, 1, 1)


def test_precision_and_recall_and_negatives() -> None:
    truth = "\n".join(
        json.dumps(r)
        for r in [
            {"meter_id": "a", "kind": "tamper_cover", "start": "2026-01-05T00:00:00Z",
             "end": "2026-01-05T01:00:00Z"},
            {"meter_id": "b", "kind": "duplicate", "start": "2026-01-05T00:00:00Z",
             "end": "2026-01-06T00:00:00Z"},
        ]
    )  # fmt: skip
    faults = parse_truth(truth.splitlines())
    alerts = [
        Labelled("a", "tamper_cover", T0, T0 + H),
        Labelled("b", "comms_loss", T0, T0 + 5 * H),  # a duplicate is no comms loss
    ]
    scores = {s.kind: s for s in score(faults, alerts)}
    assert scores["tamper_cover"].precision == 1.0 and scores["tamper_cover"].recall == 1.0
    assert scores["comms_loss"].precision == 0.0 and scores["comms_loss"].recall == 1.0
    assert "tamper_cover" in render(list(scores.values()))


def test_since_ignores_what_ended_before() -> None:
    faults = [Labelled("a", "burst", T0, T0 + H)]
    assert score(faults, [], since=T0 + 5 * H)[1].false_negatives == 0
    assert score(faults, [], since=T0)[1].false_negatives == 1


def test_bad_truth_lines_are_reported_with_their_number() -> None:
    with pytest.raises(ScoreError, match="line 2"):
        parse_truth(['{"meter_id": "a", "kind": "leak", "start": "2026-01-05T00:00:00Z"}', "{"])
    with pytest.raises(ScoreError, match="UTC offset"):
        parse_truth(['{"meter_id": "a", "kind": "leak", "start": "2026-01-05T00:00:00"}'])
