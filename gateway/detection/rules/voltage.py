"""Supply quality on electricity meters: voltage sags and swells."""

from __future__ import annotations

from datetime import datetime

from gateway.detection.model import AlertKind, Episode, MeterData, MeterProfile, Rules, Sample
from gateway.detection.rules.series import VOLTAGES, runs

__all__ = ["detect_voltage"]


def detect_voltage(profile: MeterProfile, data: MeterData, rules: Rules) -> list[Episode]:
    """Any phase voltage outside the band on ``voltage_readings`` consecutive readings."""
    if profile.utility != "electricity":
        return []
    phases: dict[datetime, list[float]] = {}
    for channel in VOLTAGES:
        for s in data.series(channel, measured_only=True):
            phases.setdefault(s.ts, []).append(s.value)
    instants = [Sample(ts, 0.0) for ts in sorted(phases)]
    low = rules.sag_factor * rules.nominal_voltage
    high = rules.swell_factor * rules.nominal_voltage
    episodes: list[Episode] = []
    for kind, outside in (
        (AlertKind.VOLTAGE_SAG, lambda s: min(phases[s.ts]) < low),
        (AlertKind.VOLTAGE_SWELL, lambda s: max(phases[s.ts]) > high),
    ):
        for run, ended_by in runs(instants, outside):
            if len(run) < rules.voltage_readings:
                continue
            values = [v for s in run for v in phases[s.ts]]
            extreme = min(values) if kind is AlertKind.VOLTAGE_SAG else max(values)
            episodes.append(
                Episode(
                    kind,
                    run[0].ts,
                    run[-1].ts if ended_by else None,
                    {"readings": len(run), "extreme_v": extreme},
                )
            )
    return episodes
