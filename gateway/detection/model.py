"""Values the detection rules work on: a meter's profile, its series, the rule thresholds, and
the episodes the rules find.

Everything here is a frozen value; nothing does I/O. Times are aware UTC datetimes of the
readings' own ``ts`` (data time); ``received_at`` is the gateway's receive clock, used only by
the two rules that are about delivery (comms loss while a meter was live, clock drift).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from gateway.errors import ConfigError

__all__ = [
    "AlertKind",
    "Episode",
    "EventRecord",
    "MeterData",
    "MeterProfile",
    "Rules",
    "Sample",
    "Severity",
    "WorkListKind",
]


class AlertKind(enum.StrEnum):
    LEAK = "leak"
    BURST = "burst"
    REVERSE_FLOW = "reverse_flow"
    STUCK_REGISTER = "stuck_register"
    REGISTER_ROLLBACK = "register_rollback"
    COMMS_LOSS = "comms_loss"
    CLOCK_DRIFT = "clock_drift"
    VOLTAGE_SAG = "voltage_sag"
    VOLTAGE_SWELL = "voltage_swell"
    TAMPER_COVER = "tamper_cover"
    TAMPER_MAGNETIC = "tamper_magnetic"


class WorkListKind(enum.StrEnum):
    """Every kind of alert on the work list: the rules' kinds (:class:`AlertKind`), and the
    command loop's for a command the meter refused or nobody could confirm."""

    LEAK = "leak"
    BURST = "burst"
    REVERSE_FLOW = "reverse_flow"
    STUCK_REGISTER = "stuck_register"
    REGISTER_ROLLBACK = "register_rollback"
    COMMS_LOSS = "comms_loss"
    CLOCK_DRIFT = "clock_drift"
    VOLTAGE_SAG = "voltage_sag"
    VOLTAGE_SWELL = "voltage_swell"
    TAMPER_COVER = "tamper_cover"
    TAMPER_MAGNETIC = "tamper_magnetic"
    COMMAND_UNCONFIRMED = "command_unconfirmed"
    COMMAND_REJECTED = "command_rejected"


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for the most urgent (work-list order)."""
        return {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}[self]


SEVERITY: Mapping[AlertKind, Severity] = MappingProxyType(
    {
        AlertKind.LEAK: Severity.WARNING,
        AlertKind.BURST: Severity.CRITICAL,
        AlertKind.REVERSE_FLOW: Severity.WARNING,
        AlertKind.STUCK_REGISTER: Severity.WARNING,
        AlertKind.REGISTER_ROLLBACK: Severity.CRITICAL,
        AlertKind.COMMS_LOSS: Severity.WARNING,
        AlertKind.CLOCK_DRIFT: Severity.INFO,
        AlertKind.VOLTAGE_SAG: Severity.WARNING,
        AlertKind.VOLTAGE_SWELL: Severity.WARNING,
        AlertKind.TAMPER_COVER: Severity.WARNING,
        AlertKind.TAMPER_MAGNETIC: Severity.CRITICAL,
    }
)


@dataclass(frozen=True, slots=True)
class Rules:
    """Every threshold of every rule (defaults from the specification; see docs/detection.md).

    Override any of them with ``GATEWAY_DETECTION_RULES`` (a JSON object of field → value).
    """

    leak_min_flow_lph: float = 2.0
    leak_window_h: float = 24.0
    leak_night_start_h: float = 1.0
    leak_night_end_h: float = 4.0
    leak_nights: int = 2
    burst_flow_lph: float = 500.0
    burst_min_minutes: float = 30.0
    burst_min_readings: int = 3
    """Consecutive flow readings that must show the burst level (two whole intervals)."""
    reverse_water_litres: float = 5.0
    reverse_energy_kwh: float = 0.1
    reverse_window_minutes: float = 60.0
    reverse_negative_minutes: float = 15.0
    stuck_hours: float = 6.0
    stuck_min_kwh: float = 0.5
    stuck_min_litres: float = 20.0
    rollback_resolution: float = 0.001
    rollover_margin: float = 0.01
    comms_intervals: float = 3.0
    comms_min_hours: float = 1.0
    drift_max_s: float = 120.0
    drift_messages: int = 3
    nominal_voltage: float = 230.0
    sag_factor: float = 0.90
    swell_factor: float = 1.10
    voltage_readings: int = 3
    lookback_h: float = 72.0
    """How much history before the changed data is re-read on every evaluation."""

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> Rules:
        known = {f.name: f for f in fields(cls)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ConfigError(f"unknown detection rule setting {name!r}")
            default = getattr(cls(), name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"detection rule setting {name!r} must be a number")
            changes[name] = type(default)(value)
            if changes[name] < 0:
                raise ConfigError(f"detection rule setting {name!r} must not be negative")
        return replace(cls(), **changes)


@dataclass(frozen=True, slots=True)
class MeterProfile:
    """What the registry says about a meter, as far as the rules care."""

    meter_id: str
    utility: str
    """``electricity``, ``water`` or ``unknown``."""
    interval_s: int = 900
    time_zone: str = "UTC"
    export_allowed: bool = False
    register_max: float | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    ts: datetime
    value: float
    measured: bool = True
    """False for ``estimated`` and ``backfilled`` readings."""
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    ts: datetime
    type: str
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MeterData:
    """One meter's stored data over the evaluated window, each series in ``ts`` order."""

    channels: Mapping[str, Sequence[Sample]] = field(default_factory=dict)
    events: Sequence[EventRecord] = ()

    def series(self, channel: str, *, measured_only: bool = False) -> Sequence[Sample]:
        samples = self.channels.get(channel, ())
        if measured_only:
            return [s for s in samples if s.measured]
        return samples


@dataclass(frozen=True, slots=True)
class Episode:
    """One episode of one problem on one meter, in data time; ``end`` None while it lasts."""

    kind: AlertKind
    start: datetime
    end: datetime | None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]

    def overlaps(self, start: datetime, end: datetime | None) -> bool:
        return (end is None or self.start <= end) and (self.end is None or start <= self.end)
