"""Scoring alerts against ground truth: per kind, true/false positives, misses, precision and
recall. Pure; ``gateway detect-score`` reads the files and the database around it.

A fault counts as found when an alert of the same meter and kind overlaps its ``[start, end]``
widened on both sides by that kind's allowed detection delay. An alert that matches no fault is
a false positive. Precision is the share of alerts that match a fault, recall the share of
faults found. Ground-truth kinds that are not alert kinds (duplicates, reordering, malformed
payloads, rollovers) are negatives: they only ever contribute false positives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.detection.model import AlertKind
from gateway.errors import GatewayError

__all__ = ["DELAYS", "KindScore", "Labelled", "ScoreError", "parse_truth", "render", "score"]

DELAYS: Mapping[AlertKind, timedelta] = {kind: timedelta(hours=1) for kind in AlertKind} | {
    AlertKind.LEAK: timedelta(hours=26),
    AlertKind.STUCK_REGISTER: timedelta(hours=7),
    AlertKind.COMMS_LOSS: timedelta(hours=2),
}


class ScoreError(GatewayError):
    """The ground-truth file cannot be read."""


@dataclass(frozen=True, slots=True)
class Labelled:
    """A fault from the ground truth, or an alert: meter, kind and a data-time span."""

    meter_id: str
    kind: str
    start: datetime
    end: datetime | None


@dataclass(frozen=True, slots=True)
class KindScore:
    kind: str
    true_positives: int
    """Faults found."""
    false_positives: int
    """Alerts that match no fault."""
    false_negatives: int
    """Faults missed."""
    alerts: int

    @property
    def precision(self) -> float:
        return (self.alerts - self.false_positives) / self.alerts if self.alerts else 1.0

    @property
    def recall(self) -> float:
        faults = self.true_positives + self.false_negatives
        return self.true_positives / faults if faults else 1.0


def _time(text: object, where: str) -> datetime:
    if not isinstance(text, str):
        raise ScoreError(f"{where}: expected an RFC 3339 time, got {text!r}")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ScoreError(f"{where}: bad time {text!r}") from None
    if moment.tzinfo is None:
        raise ScoreError(f"{where}: time {text!r} needs a UTC offset")
    return moment


def parse_truth(lines: Iterable[str]) -> list[Labelled]:
    """Ground-truth JSON Lines as ``firmware-sim`` writes them."""
    out: list[Labelled] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScoreError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict) or not {"meter_id", "kind", "start"} <= record.keys():
            raise ScoreError(f"line {number}: needs meter_id, kind, start and end")
        start = _time(record["start"], f"line {number}")
        end = _time(record.get("end") or record["start"], f"line {number}")
        out.append(Labelled(str(record["meter_id"]), str(record["kind"]), start, end))
    return out


def _overlaps(fault: Labelled, alert: Labelled, delay: timedelta) -> bool:
    lo = fault.start - delay
    hi = (fault.end or fault.start) + delay
    return alert.start <= hi and (alert.end is None or alert.end >= lo)


def score(
    faults: Sequence[Labelled], alerts: Sequence[Labelled], *, since: datetime | None = None
) -> list[KindScore]:
    """Per alert kind (every kind, in a fixed order), how the alerts match the faults."""
    if since is not None:
        faults = [f for f in faults if (f.end or f.start) >= since]
        alerts = [a for a in alerts if a.end is None or a.end >= since]
    by_meter: dict[tuple[str, str], list[Labelled]] = {}
    for fault in faults:
        by_meter.setdefault((fault.meter_id, fault.kind), []).append(fault)
    results: list[KindScore] = []
    for kind in AlertKind:
        delay = DELAYS[kind]
        kind_alerts = [a for a in alerts if a.kind == kind.value]
        kind_faults = [f for f in faults if f.kind == kind.value]
        unmatched = sum(
            1
            for a in kind_alerts
            if not any(_overlaps(f, a, delay) for f in by_meter.get((a.meter_id, kind.value), ()))
        )
        found = sum(
            1
            for f in kind_faults
            if any(a.meter_id == f.meter_id and _overlaps(f, a, delay) for a in kind_alerts)
        )
        results.append(
            KindScore(kind.value, found, unmatched, len(kind_faults) - found, len(kind_alerts))
        )
    return results


def render(scores: Sequence[KindScore]) -> str:
    """A fixed-width table, one line per kind."""
    lines = [f"{'kind':<18} {'TP':>5} {'FP':>5} {'FN':>5} {'precision':>9} {'recall':>7}"]
    for s in scores:
        lines.append(
            f"{s.kind:<18} {s.true_positives:>5} {s.false_positives:>5} "
            f"{s.false_negatives:>5} {s.precision:>9.3f} {s.recall:>7.3f}"
        )
    return "\n".join(lines)
