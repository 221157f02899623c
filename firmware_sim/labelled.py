"""Labelled fleets for detection tests and benchmarks: weeks of simulated data in seconds.

:func:`plan_labelled_fleet` draws, from a seed, a fleet and a fault schedule in which every
alert kind the gateway detects occurs at least ``per_kind`` times on distinct meters (both
utilities where the kind applies to both), plus negatives that must raise nothing: register
rollovers, duplicated and reordered deliveries, malformed payloads. :func:`generate` then steps
every meter through the whole period in simulated time (no wall clock, no sockets) and yields the
MQTT messages in time order, with the ground truth, exactly as the meters would have sent them.

Faults are placed where the data can show them: consumption faults on post-paid meters (a
prepaid meter may be cut off for lack of credit, and a cut-off meter shows no flow to leak or
stick), export faults on meters without registered solar generation, and comms losses that
lose the readings (``backlog: 0``: the meter's buffer overflowed), since data delivered all at
once is never "live" and a backlog that fills the gap leaves nothing in data time to see.
Clock drift needs live delivery and is not part of a generated fleet.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from firmware_sim.faults import Fault, FaultKind, FaultRecord
from firmware_sim.identity import MeterIdentity, Transport, Utility, make_identity
from firmware_sim.meter import Meter, MeterConfig
from firmware_sim.transmit import PayloadFormat, Transmitter
from protocols.errors import UsageError
from protocols.topics import TopicKind, Topics

__all__ = ["LabelledFleet", "RegistryEntry", "generate", "plan_labelled_fleet"]


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """What an operator registers for a meter of the fleet."""

    meter_id: str
    utility: str
    payment: str
    reporting_interval_s: int
    export_allowed: bool


@dataclass(frozen=True, slots=True)
class LabelledFleet:
    seed: int
    start: datetime
    days: int
    config: MeterConfig
    identities: Sequence[MeterIdentity]
    registry: Sequence[RegistryEntry]
    faults: Sequence[Fault]
    batch: int = 24
    """Interval readings per telemetry message."""
    fmt: PayloadFormat = PayloadFormat.BINARY

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass(slots=True)
class _Pools:
    rng: random.Random
    used: set[str] = field(default_factory=set)

    def take(self, candidates: Sequence[MeterIdentity], count: int, what: str) -> list[str]:
        free = [i.meter_id for i in candidates if i.meter_id not in self.used]
        if len(free) < count:
            raise UsageError(f"fleet too small: {count} meters needed for {what}, {len(free)} free")
        chosen = self.rng.sample(free, count)
        self.used.update(chosen)
        return chosen


# (kind, who, duration range in hours, params)
_PLAN: tuple[tuple[FaultKind, str, tuple[float, float], dict[str, float]], ...] = (
    (FaultKind.LEAK, "water_postpaid", (48.0, 72.0), {"rate_lph": 12.0}),
    (FaultKind.BURST, "water_postpaid", (2.0, 4.0), {"rate_lph": 1500.0}),
    (FaultKind.REVERSE_FLOW, "water_postpaid", (3.0, 6.0), {"rate_lph": 30.0}),
    (FaultKind.REVERSE_FLOW, "electricity_no_pv", (3.0, 6.0), {"rate_kw": 1.0}),
    (FaultKind.STUCK_REGISTER, "water_postpaid", (24.0, 36.0), {}),
    (FaultKind.STUCK_REGISTER, "electricity_postpaid", (24.0, 36.0), {}),
    (FaultKind.REGISTER_ROLLBACK, "water", (0.0, 0.0), {}),
    (FaultKind.REGISTER_ROLLBACK, "electricity", (0.0, 0.0), {}),
    (FaultKind.COMMS_LOSS, "any", (6.0, 12.0), {"backlog": 0.0}),
    (FaultKind.VOLTAGE_SAG, "electricity", (4.0, 8.0), {}),
    (FaultKind.VOLTAGE_SWELL, "electricity", (4.0, 8.0), {}),
    (FaultKind.TAMPER_COVER, "any", (1.0, 3.0), {}),
    (FaultKind.TAMPER_MAGNETIC, "any", (24.0, 72.0), {}),
    # Negatives: nothing here may raise an alert.
    (FaultKind.REGISTER_ROLLOVER, "any", (0.0, 0.0), {"max": 100000.0}),
    (FaultKind.DUPLICATE, "any", (48.0, 96.0), {"copies": 2.0}),
    (FaultKind.OUT_OF_ORDER, "any", (48.0, 96.0), {"window": 4.0}),
    (FaultKind.MALFORMED_PAYLOAD, "any", (24.0, 48.0), {}),
)
_SPLIT = frozenset({FaultKind.REVERSE_FLOW, FaultKind.STUCK_REGISTER, FaultKind.REGISTER_ROLLBACK})


def plan_labelled_fleet(
    *,
    seed: int,
    meters: int,
    days: int,
    start: datetime,
    per_kind: int = 12,
    interval_s: int = 3600,
) -> LabelledFleet:
    """A fleet of ``meters`` and its fault schedule over ``days`` from ``start`` (pure)."""
    if days < 6:
        raise UsageError("a labelled fleet needs at least 6 days")
    config = MeterConfig(interval_s=interval_s, tick_s=interval_s)
    identities = [make_identity(seed, i, transport=Transport.MQTT) for i in range(meters)]
    has_pv = {
        ident.meter_id: Meter(ident, seed=seed, start=start, config=config).e_profile.pv_kwp > 0
        for ident in identities
        if ident.utility is Utility.ELECTRICITY
    }
    groups: dict[str, list[MeterIdentity]] = {
        "any": list(identities),
        "water": [i for i in identities if i.utility is Utility.WATER],
        "electricity": [i for i in identities if i.utility is Utility.ELECTRICITY],
        "water_postpaid": [i for i in identities if i.utility is Utility.WATER and not i.prepaid],
        "electricity_postpaid": [
            i for i in identities if i.utility is Utility.ELECTRICITY and not i.prepaid
        ],
        "electricity_no_pv": [
            i
            for i in identities
            if i.utility is Utility.ELECTRICITY and not i.prepaid and not has_pv[i.meter_id]
        ],
    }
    rng = random.Random(f"labelled|{seed}")  # noqa: S311 - simulation, not cryptography
    pools = _Pools(rng)
    faults: list[Fault] = []
    for kind, who, (low, high), params in _PLAN:
        count = -(-per_kind // 2) if kind in _SPLIT else per_kind
        if kind in (FaultKind.DUPLICATE, FaultKind.OUT_OF_ORDER, FaultKind.MALFORMED_PAYLOAD):
            count = max(1, per_kind * 5 // 6)
        for meter_id in pools.take(groups[who], count, f"{kind.value} ({who})"):
            hours = rng.uniform(low, high)
            begin = start + timedelta(hours=rng.uniform(30.0, days * 24.0 - hours - 30.0))
            begin = begin.replace(second=0, microsecond=0, minute=rng.choice((0, 15, 30, 45)))
            faults.append(
                Fault(
                    meter_id,
                    kind,
                    begin,
                    begin + timedelta(hours=round(hours, 2)),
                    MappingProxyType(dict(params)),
                )
            )
    registry = [
        RegistryEntry(
            i.meter_id,
            i.utility.value,
            "prepaid" if i.prepaid else "postpaid",
            interval_s,
            has_pv.get(i.meter_id, False),
        )
        for i in identities
    ]
    return LabelledFleet(seed, start, days, config, identities, registry, faults)


def generate(fleet: LabelledFleet, topics: Topics) -> Iterator[tuple[str, bytes] | FaultRecord]:
    """The fleet's messages ``(topic, payload)`` in time order, interleaved with the ground-truth
    records as faults end (and, at the end, those still active)."""
    by_meter: dict[str, list[Fault]] = {}
    for fault in fleet.faults:
        by_meter.setdefault(fault.meter_id, []).append(fault)
    meters = [
        Meter(
            ident,
            seed=fleet.seed,
            start=fleet.start,
            config=fleet.config,
            faults=by_meter.get(ident.meter_id, ()),
        )
        for ident in fleet.identities
    ]
    senders = [Transmitter(m.meter_id, batch=fleet.batch, fmt=fleet.fmt) for m in meters]
    step = timedelta(seconds=fleet.config.interval_s)
    now = fleet.start
    while now < fleet.end:
        now += step
        last = now >= fleet.end
        for meter, sender in zip(meters, senders, strict=True):
            result = meter.step(now)
            yield from result.records
            for msg in sender.push(result, None, meter.active, force=last):
                yield _topic(topics, msg.kind, msg.meter_id), msg.payload
    for meter in meters:
        yield from meter.finish(now)


def _topic(topics: Topics, kind: TopicKind, meter_id: str) -> str:
    match kind:
        case TopicKind.TELEMETRY:
            return topics.telemetry(meter_id)
        case TopicKind.EVENTS:
            return topics.events(meter_id)
        case TopicKind.STATUS:
            return topics.status(meter_id)
        case _:
            return topics.command_reply(meter_id)
