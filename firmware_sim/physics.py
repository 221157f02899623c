"""Physical consumption models: household electricity load curves and water usage.

Pure and deterministic: every function takes the meter's own ``random.Random`` and the
simulated time, so a seed reproduces the same consumption regardless of wall-clock timing.
The meter model advances these in fixed ticks (default 60 s of simulated time).

Electricity: a residential daily shape (morning and evening peaks, low at night) scaled by the
household's peak demand, with AR(1) noise and short appliance spikes; some households have
rooftop PV that exports at midday. Voltage sits near 230 V and droops slightly with load.

Water: draws (toilet, tap, shower, washing machine, garden) arrive as a Poisson process whose
rate follows the time of day, nearly zero between 01:00 and 05:00 ("quiet nights").
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

__all__ = [
    "ElectricProfile",
    "ElectricState",
    "PhaseValues",
    "WaterDraw",
    "WaterProfile",
    "WaterState",
    "draw_noise",
    "electric_tick",
    "hour_of_day",
    "phase_values",
    "water_tick",
]

NOMINAL_VOLTAGE: Final = 230.0
NOMINAL_FREQUENCY: Final = 50.0
POWER_FACTOR: Final = 0.95

# Fraction of peak demand by hour (residential, winter-ish), linearly interpolated.
_LOAD_SHAPE: Final = (
    0.30, 0.25, 0.22, 0.22, 0.24, 0.35, 0.65, 0.85, 0.70, 0.50, 0.45, 0.45,
    0.48, 0.45, 0.42, 0.45, 0.55, 0.80, 1.00, 0.95, 0.85, 0.70, 0.50, 0.38,
)  # fmt: skip

# Expected water draws per hour by hour of day; ~0 between 01:00 and 05:00.
_DRAW_RATE: Final = (
    0.10, 0.00, 0.00, 0.00, 0.00, 0.30, 2.50, 3.00, 1.50, 0.80, 0.70, 0.70,
    0.90, 0.70, 0.60, 0.70, 1.00, 1.60, 2.20, 2.00, 1.50, 1.00, 0.50, 0.25,
)  # fmt: skip

# (name, probability, flow l/min, duration min)
_DRAW_KINDS: Final = (
    ("toilet", 0.42, 6.0, 1.0),
    ("tap", 0.36, 4.0, 1.0),
    ("shower", 0.13, 9.0, 7.0),
    ("washing_machine", 0.06, 10.0, 5.0),
    ("garden", 0.03, 15.0, 20.0),
)


def hour_of_day(now: datetime) -> float:
    """Fractional hour of the day, UTC (the simulated households live on UTC)."""
    return now.hour + now.minute / 60.0 + now.second / 3600.0


def _interpolate(table: tuple[float, ...], hour: float) -> float:
    low = int(hour) % 24
    frac = hour - int(hour)
    return table[low] * (1.0 - frac) + table[(low + 1) % 24] * frac


@dataclass(frozen=True, slots=True)
class ElectricProfile:
    """A household's electrical character, drawn once per meter."""

    peak_kw: float
    pv_kwp: float
    phase_shares: tuple[float, float, float]
    voltage_offset: float

    @classmethod
    def draw(cls, rng: random.Random, *, three_phase: bool) -> ElectricProfile:
        peak = rng.uniform(1.5, 4.5)
        pv = rng.uniform(2.0, 5.0) if rng.random() < 0.25 else 0.0
        if three_phase:
            raw = [rng.uniform(0.6, 1.4) for _ in range(3)]
            total = sum(raw)
            shares = (raw[0] / total, raw[1] / total, raw[2] / total)
        else:
            shares = (1.0, 0.0, 0.0)
        return cls(peak, pv, shares, rng.uniform(-4.0, 4.0))


@dataclass(frozen=True, slots=True)
class PhaseValues:
    voltage: tuple[float, float, float]
    current: tuple[float, float, float]
    power_kw: tuple[float, float, float]
    frequency: float


@dataclass(slots=True)
class ElectricState:
    """Mutable physics state that carries over between ticks."""

    noise: float = 0.0
    spike_left_s: float = 0.0
    spike_kw: float = 0.0
    cloud: float = 1.0
    cloud_day: int = -1


def electric_tick(
    profile: ElectricProfile,
    state: ElectricState,
    rng: random.Random,
    now: datetime,
    dt: float,
) -> tuple[float, float]:
    """Advance one tick; return ``(load_kw, pv_kw)`` averaged over the tick."""
    hour = hour_of_day(now)
    state.noise = 0.85 * state.noise + 0.15 * rng.gauss(0.0, 1.0)
    base = profile.peak_kw * _interpolate(_LOAD_SHAPE, hour) * math.exp(0.35 * state.noise)
    if state.spike_left_s <= 0 and rng.random() < dt / 3600.0 * 1.5:
        state.spike_kw = rng.uniform(1.0, 2.4)  # kettle, iron, microwave
        state.spike_left_s = rng.uniform(60.0, 300.0)
    spike = 0.0
    if state.spike_left_s > 0:
        spike = state.spike_kw * min(1.0, state.spike_left_s / dt)
        state.spike_left_s -= dt
    pv = 0.0
    if profile.pv_kwp > 0:
        day = now.toordinal()
        if day != state.cloud_day:
            state.cloud_day = day
            state.cloud = rng.uniform(0.3, 1.0)
        pv = profile.pv_kwp * state.cloud * max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))
    return base + spike, pv


def draw_noise(rng: random.Random) -> tuple[float, float, float, float]:
    """Per-tick measurement noise: three voltage deviations and one frequency deviation."""
    return (rng.gauss(0.0, 0.8), rng.gauss(0.0, 0.8), rng.gauss(0.0, 0.8), rng.gauss(0.0, 0.02))


def phase_values(
    profile: ElectricProfile,
    noise: tuple[float, float, float, float],
    net_kw: float,
    *,
    energised: bool,
    voltage_factor: float,
) -> PhaseValues:
    """Instantaneous per-phase values for a net import ``net_kw`` (negative: export)."""
    volts: list[float] = []
    amps: list[float] = []
    powers: list[float] = []
    for phase, share in enumerate(profile.phase_shares):
        if share == 0.0:
            volts.append(0.0)
            amps.append(0.0)
            powers.append(0.0)
            continue
        p_kw = net_kw * share if energised else 0.0
        v = NOMINAL_VOLTAGE + profile.voltage_offset + noise[phase] - 0.6 * abs(p_kw)
        v *= voltage_factor
        volts.append(round(v, 1))
        amps.append(round(abs(p_kw) * 1000.0 / (v * POWER_FACTOR), 2) if v > 0 else 0.0)
        powers.append(round(p_kw, 3))
    freq = round(NOMINAL_FREQUENCY + noise[3], 2)
    return PhaseValues(
        (volts[0], volts[1], volts[2]),
        (amps[0], amps[1], amps[2]),
        (powers[0], powers[1], powers[2]),
        freq,
    )


@dataclass(frozen=True, slots=True)
class WaterProfile:
    """A household's water character: how many draws it makes."""

    scale: float

    @classmethod
    def draw(cls, rng: random.Random) -> WaterProfile:
        persons = rng.randint(1, 6)
        return cls(scale=0.5 + 0.35 * persons)


@dataclass(slots=True)
class WaterDraw:
    flow_lpm: float
    left_s: float


@dataclass(slots=True)
class WaterState:
    draws: list[WaterDraw] = field(default_factory=list)


def water_tick(
    profile: WaterProfile,
    state: WaterState,
    rng: random.Random,
    now: datetime,
    dt: float,
) -> float:
    """Advance one tick; return the household's demand in litres over the tick."""
    expected = _interpolate(_DRAW_RATE, hour_of_day(now)) * profile.scale * dt / 3600.0
    # Poisson arrivals within the tick (Knuth; expected is small).
    limit = math.exp(-expected)
    product = rng.random()
    while product > limit:
        pick = rng.random()
        chosen = _DRAW_KINDS[-1]
        for kind in _DRAW_KINDS:
            pick -= kind[1]
            if pick <= 0:
                chosen = kind
                break
        _name, _prob, flow, minutes = chosen
        state.draws.append(
            WaterDraw(flow * rng.uniform(0.7, 1.3), minutes * 60.0 * rng.uniform(0.6, 1.5))
        )
        product *= rng.random()
    litres = 0.0
    remaining: list[WaterDraw] = []
    for draw in state.draws:
        used = min(dt, draw.left_s)
        litres += draw.flow_lpm * used / 60.0
        draw.left_s -= used
        if draw.left_s > 0:
            remaining.append(draw)
    state.draws = remaining
    return litres
