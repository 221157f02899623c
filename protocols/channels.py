"""Telemetry channel table of the device protocol (docs/protocol.md §3).

Channels are OBIS codes (IEC 62056-61, value group C.D.E) where one exists. Each channel has a
unit, a kind and a physical range: a value outside the range is rejected as ``out_of_range``
rather than stored, because it can only come from a broken meter or a corrupt payload.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = ["CHANNELS", "Channel", "ChannelKind"]


class ChannelKind(enum.StrEnum):
    REGISTER = "register"
    """Cumulative register: only grows, except on rollover or tamper."""
    INSTANT = "instant"
    """Instantaneous measurement."""
    STATE = "state"
    """Enumerated state read as a number."""


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    quantity: str
    unit: str
    kind: ChannelKind
    minimum: float
    maximum: float


def _table(*channels: Channel) -> MappingProxyType[str, Channel]:
    return MappingProxyType({c.name: c for c in channels})


_R, _I, _S = ChannelKind.REGISTER, ChannelKind.INSTANT, ChannelKind.STATE
# Register ranges allow for 9-digit registers; instantaneous ranges are generous physical bounds
# for residential and small commercial supplies.
CHANNELS: Final = _table(
    Channel("1.8.0", "active energy import", "kWh", _R, 0.0, 1e9),
    Channel("2.8.0", "active energy export", "kWh", _R, 0.0, 1e9),
    Channel("1.7.0", "active power import", "kW", _I, -1e4, 1e4),
    Channel("21.7.0", "active power L1", "kW", _I, -1e4, 1e4),
    Channel("41.7.0", "active power L2", "kW", _I, -1e4, 1e4),
    Channel("61.7.0", "active power L3", "kW", _I, -1e4, 1e4),
    Channel("32.7.0", "voltage L1", "V", _I, 0.0, 1000.0),
    Channel("52.7.0", "voltage L2", "V", _I, 0.0, 1000.0),
    Channel("72.7.0", "voltage L3", "V", _I, 0.0, 1000.0),
    Channel("31.7.0", "current L1", "A", _I, -2000.0, 2000.0),
    Channel("51.7.0", "current L2", "A", _I, -2000.0, 2000.0),
    Channel("71.7.0", "current L3", "A", _I, -2000.0, 2000.0),
    Channel("14.7.0", "supply frequency", "Hz", _I, 0.0, 100.0),
    Channel("96.3.10", "disconnect control state", "", _S, 0.0, 2.0),
    Channel("24.2.1", "water volume forward", "m3", _R, 0.0, 1e9),
    Channel("24.2.2", "water volume reverse", "m3", _R, 0.0, 1e9),
    Channel("24.4.0", "valve state", "", _S, 0.0, 2.0),
    Channel("water.flow", "water flow rate", "l/h", _I, -1e6, 1e6),
    Channel("credit", "prepaid credit remaining", "kWh|m3", _I, -1e7, 1e7),
)
