"""Alert transitions: what to open, change and withdraw so stored alerts match the episodes.

Pure. The service re-evaluates a window of one meter's data and hands the episodes found, with
the meter's stored (not withdrawn) alerts that reach into the window, to :func:`reconcile`.
Episodes and alerts of one kind are matched by overlap in data time, so the same data delivered
twice, reordered or replayed gives the same alerts: a matched alert is updated in place (its
start may move earlier when late readings arrive, its end is set when the condition clears), an
episode that matches no alert opens a new one, and an alert that no episode supports any more
(a gap filled by late readings, a drop that reordered messages explain) is withdrawn.
An alert an operator resolved keeps its end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.detection.model import AlertKind, Episode

__all__ = ["Plan", "StoredAlert", "reconcile"]


@dataclass(frozen=True, slots=True)
class StoredAlert:
    id: int
    kind: AlertKind
    start: datetime
    end: datetime | None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    resolved: bool = False

    def overlaps(self, episode: Episode) -> bool:
        return episode.overlaps(self.start, self.end)


@dataclass(frozen=True, slots=True)
class Plan:
    opens: Sequence[Episode] = ()
    updates: Sequence[tuple[StoredAlert, Episode]] = ()
    """(alert, what it becomes): only alerts that actually change."""
    withdrawals: Sequence[StoredAlert] = ()

    @property
    def empty(self) -> bool:
        return not (self.opens or self.updates or self.withdrawals)


def reconcile(
    stored: Sequence[StoredAlert], computed: Sequence[Episode], *, since: datetime
) -> Plan:
    """Transitions turning ``stored`` into ``computed`` for everything that reaches ``since``
    or later (earlier episodes were judged on data this evaluation did not read)."""
    relevant = [e for e in computed if e.end is None or e.end >= since]
    opens: list[Episode] = []
    updates: list[tuple[StoredAlert, Episode]] = []
    matched: set[int] = set()
    for kind in AlertKind:
        alerts = sorted((a for a in stored if a.kind is kind), key=lambda a: (a.start, a.id))
        for episode in sorted((e for e in relevant if e.kind is kind), key=lambda e: e.start):
            alert = next((a for a in alerts if a.id not in matched and a.overlaps(episode)), None)
            if alert is None:
                opens.append(episode)
                continue
            matched.add(alert.id)
            target = episode
            if alert.resolved:
                target = Episode(kind, episode.start, alert.end, episode.evidence)
            if (target.start, target.end, dict(target.evidence)) != (
                alert.start,
                alert.end,
                dict(alert.evidence),
            ):
                updates.append((alert, target))
    withdrawals = [a for a in stored if a.id not in matched]
    return Plan(opens, updates, withdrawals)
