"""The simulated meter: a pure state machine stepped on simulated time.

``Meter.step(now)`` advances the physics in fixed ticks up to ``now`` and returns the interval
readings, events, status changes and ground-truth fault records produced on the way.
Commands (§7) and keypad tokens (§8) are handled by :mod:`firmware_sim.control`, which calls
the state-changing methods here. The meter never touches sockets or the wall clock, so a seed
gives identical readings however fast or slow the shell drives it.

Prepaid logic as on real meters: consumption drains the credit register; at zero the relay
opens (electricity) or the valve restricts to a trickle (water); credit restores supply unless
the utility has cut it remotely.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from firmware_sim.faults import Fault, FaultKind, FaultRecord, applicable
from firmware_sim.identity import MeterIdentity, Utility
from firmware_sim.physics import (
    ElectricProfile,
    ElectricState,
    WaterProfile,
    WaterState,
    draw_noise,
    electric_tick,
    phase_values,
    water_tick,
)
from firmware_sim.registers import Register
from protocols.errors import UsageError
from protocols.events import Event, EventType
from protocols.status import Status
from protocols.telemetry import Instant

__all__ = ["Meter", "MeterConfig", "Relay", "StepResult", "Valve"]


class Relay(enum.StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ARMED = "armed"

    @property
    def code(self) -> int:
        """OBIS 96.3.10 control state: 0 disconnected, 1 connected, 2 ready for reconnection."""
        return {Relay.DISCONNECTED: 0, Relay.CONNECTED: 1, Relay.ARMED: 2}[self]


class Valve(enum.StrEnum):
    OPEN = "open"
    RESTRICTED = "restricted"
    CLOSED = "closed"

    @property
    def code(self) -> int:
        """24.4.0 valve state: 0 closed, 1 open, 2 restricted."""
        return {Valve.CLOSED: 0, Valve.OPEN: 1, Valve.RESTRICTED: 2}[self]


@dataclass(frozen=True, slots=True)
class MeterConfig:
    interval_s: int = 900
    """Reading interval: one instant every ``interval_s`` of simulated time, on the grid."""
    tick_s: int = 60
    """Physics step; ``interval_s`` must be a multiple of it."""
    trickle_lph: float = 20.0
    """Flow a restricted water valve still lets through."""
    firmware: str = "sim-1.0.0"
    initial_credit: float | None = None
    """Prepaid credit at start (kWh or m3); None draws one from the meter's seed."""

    def __post_init__(self) -> None:
        if self.tick_s <= 0 or self.interval_s <= 0 or self.interval_s % self.tick_s:
            raise UsageError("interval_s must be a positive multiple of tick_s")


@dataclass(slots=True)
class StepResult:
    readings: list[Instant] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status_changed: bool = False
    records: list[FaultRecord] = field(default_factory=list)

    def extend(self, other: StepResult) -> None:
        self.readings.extend(other.readings)
        self.events.extend(other.events)
        self.status_changed |= other.status_changed
        self.records.extend(other.records)


_CREDIT_LOW = {Utility.ELECTRICITY: 5.0, Utility.WATER: 0.5}
_ROLLBACK = {Utility.ELECTRICITY: 50.0, Utility.WATER: 5.0}
_ROLLOVER_LEAD = {Utility.ELECTRICITY: 2.0, Utility.WATER: 0.2}


class Meter:
    """One simulated electricity or water meter."""

    def __init__(
        self,
        identity: MeterIdentity,
        *,
        seed: int,
        start: datetime,
        config: MeterConfig | None = None,
        faults: Sequence[Fault] = (),
    ) -> None:
        self.identity = identity
        self.config = config or MeterConfig()
        # Simulation randomness, not cryptography: seeded for reproducibility.
        self.rng = random.Random(f"meter|{seed}|{identity.index}")  # noqa: S311
        # Control randomness (customer button presses) draws from its own stream, so commands
        # arriving at wall-clock-dependent moments never shift the physics' random sequence.
        self.ctl_rng = random.Random(f"control|{seed}|{identity.index}")  # noqa: S311
        self.noise = (0.0, 0.0, 0.0, 0.0)
        epoch = int(start.timestamp())
        self.t = datetime.fromtimestamp(epoch - epoch % self.config.tick_s, start.tzinfo)
        rng = self.rng
        elec = identity.utility is Utility.ELECTRICITY
        self.main = Register(rng.uniform(1000.0, 20000.0) if elec else rng.uniform(50.0, 2000.0))
        self.second = Register(0.0)
        """Export energy (2.8.0) or reverse volume (24.2.2)."""
        self.e_profile = ElectricProfile.draw(rng, three_phase=identity.three_phase)
        self.w_profile = WaterProfile.draw(rng)
        self.e_state = ElectricState()
        self.w_state = WaterState()
        self.credit: float | None = None
        if identity.prepaid:
            init = self.config.initial_credit
            self.credit = (
                init
                if init is not None
                else round(rng.uniform(5.0, 60.0) if elec else rng.uniform(0.5, 6.0), 1)
            )
        self.credit_low_sent = (
            self.credit is not None and self.credit < _CREDIT_LOW[identity.utility]
        )
        self.remote_relay = Relay.CONNECTED
        self.remote_valve = Valve.OPEN
        self.button_at: datetime | None = None
        self.net_kw = 0.0
        self.flow_lph = 0.0
        self.values: dict[str, float] = {}
        self.pending: list[Fault] = sorted(
            (f for f in faults if applicable(f.kind, identity.utility)), key=lambda f: f.start
        )
        self.active: dict[FaultKind, Fault] = {}
        self.rollover: Fault | None = None
        for fault in self.pending:
            if fault.kind is FaultKind.REGISTER_ROLLOVER and self.rollover is None:
                self.rollover = fault
                self.main.set_near_limit(
                    fault.number("max", 100000.0),
                    fault.number("lead", _ROLLOVER_LEAD[identity.utility]),
                )
        self.pending = [f for f in self.pending if f.kind is not FaultKind.REGISTER_ROLLOVER]
        self._refresh_values()

    # ----------------------------------------------------------------- state views

    @property
    def meter_id(self) -> str:
        return self.identity.meter_id

    @property
    def is_electric(self) -> bool:
        return self.identity.utility is Utility.ELECTRICITY

    @property
    def credit_cut(self) -> bool:
        return self.credit is not None and self.credit <= 0.0

    @property
    def relay(self) -> Relay | None:
        if not self.is_electric:
            return None
        if self.remote_relay is not Relay.CONNECTED:
            return self.remote_relay
        return Relay.DISCONNECTED if self.credit_cut else Relay.CONNECTED

    @property
    def valve(self) -> Valve | None:
        if self.is_electric:
            return None
        if self.remote_valve is Valve.CLOSED:
            return Valve.CLOSED
        if self.remote_valve is Valve.RESTRICTED or self.credit_cut:
            return Valve.RESTRICTED
        return Valve.OPEN

    def clock(self, true_now: datetime) -> datetime:
        """The meter's own clock at true simulated time ``true_now`` (drift applied)."""
        drift = self.active.get(FaultKind.CLOCK_DRIFT)
        if drift is None:
            return true_now
        days = (true_now - drift.start).total_seconds() / 86400.0
        offset = drift.number("offset_s", 600.0) + drift.number("rate_s_per_day", 0.0) * days
        return true_now + timedelta(seconds=offset)

    def status(self, true_now: datetime) -> Status:
        relay, valve = self.relay, self.valve
        return Status(
            online=True,
            ts=self.clock(true_now),
            firmware=self.config.firmware,
            relay=relay.value if relay is not None else None,
            valve=valve.value if valve is not None else None,
            credit=round(self.credit, 3) if self.credit is not None else None,
            interval_s=self.config.interval_s,
        )

    def event(self, true_now: datetime, kind: EventType, /, **details: str | int | float) -> Event:
        return Event(self.clock(true_now), kind, MappingProxyType(details))

    # ----------------------------------------------------------------- supply changes

    def supply_events(
        self, before: tuple[Relay | None, Valve | None], now: datetime
    ) -> list[Event]:
        """Events for a relay/valve transition from ``before`` to the current state."""
        events: list[Event] = []
        relay, valve = self.relay, self.valve
        if relay is not before[0] and relay is not None:
            if relay is Relay.CONNECTED:
                events.append(self.event(now, EventType.RELAY_CLOSED))
            elif before[0] is Relay.CONNECTED:
                events.append(self.event(now, EventType.RELAY_OPENED))
        if valve is not before[1] and valve is not None:
            kind = {
                Valve.OPEN: EventType.VALVE_OPENED,
                Valve.RESTRICTED: EventType.VALVE_RESTRICTED,
                Valve.CLOSED: EventType.VALVE_CLOSED,
            }[valve]
            events.append(self.event(now, kind))
        return events

    def supply(self) -> tuple[Relay | None, Valve | None]:
        return self.relay, self.valve

    def add_credit(self, amount: float, now: datetime) -> StepResult:
        """Apply a credit token's amount (units of the meter)."""
        if self.credit is None:
            raise UsageError("a post-paid meter has no credit register")
        before = self.supply()
        self.credit += amount
        if self.credit >= _CREDIT_LOW[self.identity.utility]:
            self.credit_low_sent = False
        self._refresh_values()
        return StepResult(events=self.supply_events(before, now), status_changed=True)

    def clear_credit(self, now: datetime) -> StepResult:
        if self.credit is None:
            raise UsageError("a post-paid meter has no credit register")
        before = self.supply()
        self.credit = 0.0
        self._refresh_values()
        return StepResult(events=self.supply_events(before, now), status_changed=True)

    def set_remote(self, relay: Relay | None, valve: Valve | None, now: datetime) -> StepResult:
        """Apply a remote control order (from an authenticated command)."""
        before = self.supply()
        if relay is not None:
            self.remote_relay = relay
            self.button_at = None
            if relay is Relay.ARMED:
                # The customer presses the button some minutes later.
                self.button_at = now + timedelta(seconds=self.ctl_rng.uniform(60.0, 1800.0))
        if valve is not None:
            self.remote_valve = valve
        self._refresh_values()
        events = self.supply_events(before, now)
        return StepResult(events=events, status_changed=True)

    def press_button(self, now: datetime) -> StepResult:
        """The customer presses the reconnect button (only does something when armed)."""
        if self.remote_relay is not Relay.ARMED:
            return StepResult()
        return self.set_remote(Relay.CONNECTED, None, now)

    # ----------------------------------------------------------------- stepping

    def step(self, now: datetime) -> StepResult:
        """Advance to ``now`` (true simulated time) in whole ticks."""
        result = StepResult()
        tick = timedelta(seconds=self.config.tick_s)
        while self.t + tick <= now:
            self._tick(self.t, self.t + tick, result)
            self.t += tick
        return result

    def finish(self, now: datetime) -> list[FaultRecord]:
        """Ground truth for faults still active when the run stops."""
        records = [
            FaultRecord(self.meter_id, f.kind, f.start, now, f.params, completed=False)
            for f in self.active.values()
        ]
        self.active.clear()
        return records

    def _tick(self, t0: datetime, t1: datetime, out: StepResult) -> None:
        self._update_faults(t0, out)
        dt = float(self.config.tick_s)
        before = self.supply()
        shown_before = self.main.shown()
        used = self._electric(t0, dt) if self.is_electric else self._water(t0, dt)
        if self.rollover is not None and self.main.shown() < shown_before:
            out.records.append(
                FaultRecord(
                    self.meter_id, FaultKind.REGISTER_ROLLOVER, t1, t1, self.rollover.params
                )
            )
            self.rollover = None
        if self.credit is not None and used > 0:
            was_positive = self.credit > 0
            self.credit = max(0.0, self.credit - used)
            low = _CREDIT_LOW[self.identity.utility]
            if self.credit < low and not self.credit_low_sent:
                self.credit_low_sent = True
                out.events.append(
                    self.event(t1, EventType.CREDIT_LOW, credit=round(self.credit, 3))
                )
            if was_positive and self.credit <= 0:
                out.events.append(self.event(t1, EventType.CREDIT_EXHAUSTED))
        if self.button_at is not None and t1 >= self.button_at:
            self.remote_relay = Relay.CONNECTED
            self.button_at = None
        after_events = self.supply_events(before, t1)
        if after_events:
            out.events.extend(after_events)
            out.status_changed = True
        self._refresh_values()
        if int(t1.timestamp()) % self.config.interval_s == 0:
            out.readings.append(Instant(self.clock(t1), dict(self.values)))

    def _electric(self, t0: datetime, dt: float) -> float:
        load, pv = electric_tick(self.e_profile, self.e_state, self.rng, t0, dt)
        self.noise = draw_noise(self.rng)
        energised = self.relay is Relay.CONNECTED
        net = (load - pv) if energised else 0.0
        reverse = self.active.get(FaultKind.REVERSE_FLOW)
        extra_export = reverse.number("rate_kw", 1.0) if reverse and energised else 0.0
        self.net_kw = net - extra_export
        factor = self._registration_factor()
        imported = max(net, 0.0) * dt / 3600.0 * factor
        self.main.value += imported
        self.second.value += (max(-net, 0.0) + extra_export) * dt / 3600.0 * factor
        return imported

    def _water(self, t0: datetime, dt: float) -> float:
        litres = water_tick(self.w_profile, self.w_state, self.rng, t0, dt)
        for kind, default in ((FaultKind.LEAK, 12.0), (FaultKind.BURST, 1500.0)):
            fault = self.active.get(kind)
            if fault is not None:
                litres += fault.number("rate_lph", default) * dt / 3600.0
        valve = self.valve
        if valve is Valve.CLOSED:
            litres = 0.0
        elif valve is Valve.RESTRICTED:
            litres = min(litres, self.config.trickle_lph * dt / 3600.0)
        reverse = self.active.get(FaultKind.REVERSE_FLOW)
        back = reverse.number("rate_lph", 30.0) * dt / 3600.0 if reverse is not None else 0.0
        if valve is Valve.CLOSED:
            back = 0.0
        self.flow_lph = (litres - back) * 3600.0 / dt
        factor = self._registration_factor()
        self.main.value += litres / 1000.0 * factor
        self.second.value += back / 1000.0 * factor
        return litres / 1000.0 * factor

    def _registration_factor(self) -> float:
        magnet = self.active.get(FaultKind.TAMPER_MAGNETIC)
        return 1.0 - magnet.number("under_registration", 0.5) if magnet is not None else 1.0

    def _refresh_values(self) -> None:
        values: dict[str, float] = {}
        if self.is_electric:
            sag = self.active.get(FaultKind.VOLTAGE_SAG) or self.active.get(FaultKind.VOLTAGE_SWELL)
            factor = 1.0
            if sag is not None:
                factor = sag.number("factor", 0.80 if sag.kind is FaultKind.VOLTAGE_SAG else 1.15)
            relay = self.relay
            assert relay is not None
            phases = phase_values(
                self.e_profile,
                self.noise,
                self.net_kw,
                energised=relay is Relay.CONNECTED,
                voltage_factor=factor,
            )
            values["1.8.0"] = self.main.shown()
            values["2.8.0"] = self.second.shown()
            values["1.7.0"] = round(self.net_kw if relay is Relay.CONNECTED else 0.0, 3)
            names = (
                ("32.7.0", "31.7.0", "21.7.0"),
                ("52.7.0", "51.7.0", "41.7.0"),
                ("72.7.0", "71.7.0", "61.7.0"),
            )
            for i, (v_ch, i_ch, p_ch) in enumerate(names):
                if self.e_profile.phase_shares[i] == 0.0:
                    continue
                values[v_ch] = phases.voltage[i]
                values[i_ch] = phases.current[i]
                values[p_ch] = phases.power_kw[i]
            values["14.7.0"] = phases.frequency
            values["96.3.10"] = float(relay.code)
        else:
            valve = self.valve
            assert valve is not None
            values["24.2.1"] = self.main.shown()
            values["24.2.2"] = self.second.shown()
            values["water.flow"] = round(self.flow_lph, 1)
            values["24.4.0"] = float(valve.code)
        if self.credit is not None:
            values["credit"] = round(self.credit, 3)
        self.values = values

    # ----------------------------------------------------------------- faults

    def _update_faults(self, t0: datetime, out: StepResult) -> None:
        for kind, fault in list(self.active.items()):
            if t0 >= fault.end:
                del self.active[kind]
                self._fault_ended(fault, t0, out)
        while self.pending and self.pending[0].start <= t0:
            fault = self.pending.pop(0)
            if t0 >= fault.end and fault.end > fault.start:
                continue  # entirely in the past (meter started after it)
            if fault.kind in self.active:
                continue  # one fault of a kind at a time per meter
            self._fault_started(fault, t0, out)
            if fault.end > fault.start:
                self.active[fault.kind] = fault
            else:
                out.records.append(
                    FaultRecord(self.meter_id, fault.kind, fault.start, fault.end, fault.params)
                )

    def _fault_started(self, fault: Fault, now: datetime, out: StepResult) -> None:
        match fault.kind:
            case FaultKind.STUCK_REGISTER:
                self.main.freeze()
                self.second.freeze()
            case FaultKind.REGISTER_ROLLBACK:
                self.main.roll_back(fault.number("amount", _ROLLBACK[self.identity.utility]))
            case FaultKind.BURST:
                out.events.append(self.event(now, EventType.BURST_DETECTED))
            case FaultKind.REVERSE_FLOW:
                out.events.append(self.event(now, EventType.REVERSE_FLOW))
            case FaultKind.TAMPER_COVER:
                out.events.append(self.event(now, EventType.TAMPER_COVER_OPEN, source="cover"))
            case FaultKind.TAMPER_MAGNETIC:
                out.events.append(self.event(now, EventType.MAGNETIC_FIELD, source="magnet"))
            case _:
                pass

    def _fault_ended(self, fault: Fault, now: datetime, out: StepResult) -> None:
        match fault.kind:
            case FaultKind.STUCK_REGISTER:
                self.main.unfreeze()
                self.second.unfreeze()
            case FaultKind.TAMPER_COVER:
                out.events.append(self.event(now, EventType.TAMPER_COVER_CLOSED, source="cover"))
            case FaultKind.CLOCK_DRIFT:
                # Event stamped with the corrected clock (fault no longer active).
                out.events.append(self.event(now, EventType.CLOCK_ADJUSTED))
            case _:
                pass
        out.records.append(
            FaultRecord(self.meter_id, fault.kind, fault.start, fault.end, fault.params)
        )
