"""Leak and faulty-meter detection: pure rules over stored readings, and the service loop that
turns their episodes into alerts (see docs/detection.md)."""

from gateway.detection.model import (
    AlertKind,
    Episode,
    EventRecord,
    MeterData,
    MeterProfile,
    Rules,
    Sample,
    Severity,
)
from gateway.detection.reconcile import Plan, StoredAlert, reconcile
from gateway.detection.rules import evaluate

__all__ = [
    "AlertKind",
    "Episode",
    "EventRecord",
    "MeterData",
    "MeterProfile",
    "Plan",
    "Rules",
    "Sample",
    "Severity",
    "StoredAlert",
    "evaluate",
    "reconcile",
]
