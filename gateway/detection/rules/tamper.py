"""Tampering, from the meter's own events: terminal cover and magnetic field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from gateway.detection.model import AlertKind, Episode, MeterData

__all__ = ["detect_tamper"]


def detect_tamper(
    data: MeterData, resolutions: Mapping[AlertKind, Sequence[datetime]] | None = None
) -> list[Episode]:
    """Cover open → closed; a magnetic field stays open until an operator resolves it."""
    episodes: list[Episode] = []
    opened: datetime | None = None
    for event in data.events:
        if event.type == "tamper_cover_open" and opened is None:
            opened = event.ts
        elif event.type == "tamper_cover_closed" and opened is not None:
            episodes.append(Episode(AlertKind.TAMPER_COVER, opened, event.ts, {"rule": "event"}))
            opened = None
    if opened is not None:
        episodes.append(Episode(AlertKind.TAMPER_COVER, opened, None, {"rule": "event"}))
    resolved = sorted((resolutions or {}).get(AlertKind.TAMPER_MAGNETIC, ()))
    magnetic: datetime | None = None
    magnetic_end: datetime | None = None
    for event in data.events:
        if event.type != "magnetic_field":
            continue
        if magnetic is not None and (magnetic_end is None or event.ts <= magnetic_end):
            continue
        if magnetic is not None:
            episodes.append(Episode(AlertKind.TAMPER_MAGNETIC, magnetic, magnetic_end, {}))
        magnetic = event.ts
        magnetic_end = next((r for r in resolved if r >= event.ts), None)
    if magnetic is not None:
        episodes.append(
            Episode(AlertKind.TAMPER_MAGNETIC, magnetic, magnetic_end, {"rule": "event"})
        )
    return episodes
