"""Fault kinds a simulated meter can be told to exhibit, and their ground-truth records.

A :class:`Fault` is scheduled on one meter for ``[start, end)`` of simulated time. The meter
model applies physical faults itself; transport faults (comms loss, duplicates, reordering,
malformed payloads) are applied by its transmitter. Whenever a fault ends (or the run stops
while it is active) the meter emits a :class:`FaultRecord`, the ground truth a detection test
compares the gateway's alarms with. Times in records are true simulated time, not the
(possibly drifting) meter clock.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from firmware_sim.identity import Utility
from protocols.errors import UsageError
from protocols.timestamps import to_rfc3339

__all__ = ["TRANSPORT_FAULTS", "Fault", "FaultKind", "FaultRecord", "applicable"]

Params = Mapping[str, float | int | str]


class FaultKind(enum.StrEnum):
    LEAK = "leak"
    """Continuous low forward flow (``rate_lph``, default 12 l/h) on top of normal use."""
    BURST = "burst"
    """Large forward flow (``rate_lph``, default 1500 l/h); the meter raises burst_detected."""
    REVERSE_FLOW = "reverse_flow"
    """Water flows backwards (``rate_lph``, default 30) / energy is exported on an import-only
    service (``rate_kw``, default 1.0); the meter raises reverse_flow."""
    STUCK_REGISTER = "stuck_register"
    """Cumulative registers stop advancing while flow/power continue; they jump to the true
    value when the fault ends."""
    REGISTER_ROLLBACK = "register_rollback"
    """Registers drop by ``amount`` (default 50 kWh / 5 m3) at the start and stay lower."""
    REGISTER_ROLLOVER = "register_rollover"
    """The meter's register begins the run ``lead`` units (default 2 kWh / 0.2 m3) below
    ``max`` (default 100000) and wraps to 0 on reaching it, as an old register near its limit
    does. The record's start and end are the instant of the wrap (the scheduled start is not
    used: a real rollover happens when consumption reaches the limit)."""
    COMMS_LOSS = "comms_loss"
    """Silence for the duration, then the backlog is delivered on reconnection (with
    ``backlog: 0`` the readings of the outage are lost instead, as when a buffer overflows)."""
    CLOCK_DRIFT = "clock_drift"
    """The meter clock is off by ``offset_s`` (default 600) plus ``rate_s_per_day``
    (default 0) per day since the start; at the end the meter resyncs (clock_adjusted)."""
    DUPLICATE = "duplicate"
    """Each telemetry message is delivered ``copies`` times (default 2)."""
    OUT_OF_ORDER = "out_of_order"
    """Telemetry messages are held in windows of ``window`` (default 4) and sent newest first."""
    VOLTAGE_SAG = "voltage_sag"
    """Voltages multiplied by ``factor`` (default 0.80)."""
    VOLTAGE_SWELL = "voltage_swell"
    """Voltages multiplied by ``factor`` (default 1.15)."""
    TAMPER_COVER = "tamper_cover"
    """Terminal cover opened at the start, closed at the end (events)."""
    TAMPER_MAGNETIC = "tamper_magnetic"
    """Magnetic field at the start (event); the register under-registers by
    ``under_registration`` (fraction, default 0.5) while it lasts."""
    IGNORE_COMMANDS = "ignore_commands"
    """The meter's control unit is deaf: commands arrive but are neither executed nor answered
    (the meter keeps reporting its readings and status)."""
    MALFORMED_PAYLOAD = "malformed_payload"
    """Besides each normal telemetry message, one malformed message (``variant``: bad_json,
    unknown_channel, string_value, missing_timestamp, out_of_range; default: rotate)."""


TRANSPORT_FAULTS = frozenset(
    {FaultKind.COMMS_LOSS, FaultKind.DUPLICATE, FaultKind.OUT_OF_ORDER, FaultKind.MALFORMED_PAYLOAD}
)
_WATER_ONLY = frozenset({FaultKind.LEAK, FaultKind.BURST})
_ELECTRICITY_ONLY = frozenset({FaultKind.VOLTAGE_SAG, FaultKind.VOLTAGE_SWELL})


def applicable(kind: FaultKind, utility: Utility) -> bool:
    if kind in _WATER_ONLY:
        return utility is Utility.WATER
    if kind in _ELECTRICITY_ONLY:
        return utility is Utility.ELECTRICITY
    return True


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault scheduled on one meter."""

    meter_id: str
    kind: FaultKind
    start: datetime
    end: datetime
    params: Params = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise UsageError("fault times must be timezone-aware")
        if self.end < self.start:
            raise UsageError(f"fault {self.kind} ends before it starts")

    def number(self, name: str, default: float) -> float:
        value = self.params.get(name, default)
        if isinstance(value, str):
            raise UsageError(f"fault {self.kind} parameter {name!r} must be a number")
        return float(value)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """Ground truth: a fault as it actually happened."""

    meter_id: str
    kind: FaultKind
    start: datetime
    end: datetime
    params: Params
    completed: bool = True
    """False when the run stopped while the fault was still active."""

    def to_json_line(self) -> str:
        return json.dumps(
            {
                "meter_id": self.meter_id,
                "kind": self.kind.value,
                "start": to_rfc3339(self.start),
                "end": to_rfc3339(self.end),
                "params": dict(self.params),
                "completed": self.completed,
            },
            sort_keys=True,
        )
