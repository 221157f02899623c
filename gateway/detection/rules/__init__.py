"""The detection rules: a meter's series in, episodes out. Pure, no I/O, no wall clock.

Each ``detect_*`` function takes one meter's profile, its stored data over a window (every
series in ``ts`` order) and the :class:`~gateway.detection.model.Rules`, and returns the
episodes of one alert kind found in that data, merged where they overlap. An episode's
``start``/``end`` are data times: when the condition began and when it was last seen to hold
(``end`` None while it still holds at the end of the data). :func:`evaluate` runs every rule
that applies to the meter's utility.

Consumption rules (leak, burst, reverse flow, stuck register, rollback) read ``measured``
readings only. A missing interval is no evidence of flow: it breaks a "continuous" run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from gateway.detection.model import AlertKind, Episode, MeterData, MeterProfile, Rules
from gateway.detection.rules.comms import detect_clock_drift, detect_comms_loss
from gateway.detection.rules.registers import (
    detect_reverse_flow,
    detect_rollback,
    detect_stuck_register,
    register_capacity,
)
from gateway.detection.rules.series import CUMULATIVE, merge
from gateway.detection.rules.tamper import detect_tamper
from gateway.detection.rules.voltage import detect_voltage
from gateway.detection.rules.water import detect_burst, detect_leak

__all__ = [
    "CUMULATIVE",
    "detect_burst",
    "detect_clock_drift",
    "detect_comms_loss",
    "detect_leak",
    "detect_reverse_flow",
    "detect_rollback",
    "detect_stuck_register",
    "detect_tamper",
    "detect_voltage",
    "evaluate",
    "merge",
    "register_capacity",
]


def evaluate(
    profile: MeterProfile,
    data: MeterData,
    rules: Rules,
    *,
    now: datetime | None = None,
    resolutions: Mapping[AlertKind, Sequence[datetime]] | None = None,
) -> list[Episode]:
    """Every episode of every kind that applies to the meter, by kind then start.

    ``now`` is the gateway's receive clock (for silence of a live meter); ``resolutions`` the
    times operators resolved alerts that stay open until resolved (magnetic tamper).
    """
    episodes: list[Episode] = []
    if profile.utility == "water":
        episodes += detect_leak(profile, data, rules)
        episodes += detect_burst(profile, data, rules)
    if profile.utility == "electricity":
        episodes += detect_voltage(profile, data, rules)
    episodes += detect_reverse_flow(profile, data, rules)
    episodes += detect_stuck_register(profile, data, rules)
    episodes += detect_rollback(profile, data, rules)
    episodes += detect_comms_loss(profile, data, rules, now)
    episodes += detect_clock_drift(profile, data, rules)
    episodes += detect_tamper(data, resolutions)
    return sorted(episodes, key=lambda e: (e.kind.value, e.start))
