"""The fleet: building N deterministic devices, and running them over MQTT and Modbus.

:func:`build_fleet` is pure (seed in, devices out). :func:`run_fleet` is the async shell: one
TaskGroup holding, per MQTT link, the named tasks ``mqtt-<link>-ticks`` and
``mqtt-<link>-inbox``, and per Modbus port a ``modbus-<port>`` server task plus the
``modbus-ticks`` stepper, and a ``progress`` task that logs one summary line every
``progress_every_s`` (messages sent, their rate, links connected) instead of a line per link.
It runs until ``stop`` is set, then shuts down cleanly: every meter publishes its partial batch
and a retained ``offline`` status, and the ground truth of faults still active is written with
``completed: false``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from firmware_sim.clock import SimClock
from firmware_sim.device import Device
from firmware_sim.faults import Fault
from firmware_sim.identity import (
    DEV_COMMAND_MASTER_KEY,
    DEV_VENDING_KEY,
    MeterIdentity,
    Transport,
    make_identity,
)
from firmware_sim.keypad import Keypad, medium_of
from firmware_sim.meter import Meter, MeterConfig
from firmware_sim.modbus_server import serve_modbus
from firmware_sim.mqtt_link import BrokerAddress, MqttLink
from firmware_sim.provisioning import ProvisionedKeys
from firmware_sim.transmit import PayloadFormat, Transmitter
from firmware_sim.truth import GroundTruth
from protocols.errors import UsageError
from protocols.topics import Topics

__all__ = ["FleetSpec", "GroundTruth", "build_fleet", "fleet_identities", "run_fleet"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetSpec:
    seed: int = 1
    meters: int = 10
    """Total meters."""
    modbus_meters: int = 0
    """How many of them (the highest indices) are served over Modbus TCP instead of MQTT."""
    config: MeterConfig = field(default_factory=MeterConfig)
    batch: int = 1
    fmt: PayloadFormat = PayloadFormat.JSON
    vending_key: bytes = DEV_VENDING_KEY
    command_master: bytes = DEV_COMMAND_MASTER_KEY

    def __post_init__(self) -> None:
        if self.meters < 1 or not 0 <= self.modbus_meters <= self.meters:
            raise UsageError("need at least one meter and at most that many Modbus meters")


def fleet_identities(spec: FleetSpec) -> list[MeterIdentity]:
    first_modbus = spec.meters - spec.modbus_meters
    return [
        make_identity(
            spec.seed,
            index,
            transport=Transport.MODBUS if index >= first_modbus else Transport.MQTT,
            vending_key=spec.vending_key,
            command_master=spec.command_master,
        )
        for index in range(spec.meters)
    ]


def build_fleet(
    spec: FleetSpec,
    start: datetime,
    faults: Mapping[str, Sequence[Fault]] | None = None,
    identities: Sequence[MeterIdentity] | None = None,
) -> list[Device]:
    """Deterministic devices for ``spec`` starting at simulated time ``start``."""
    faults = faults or {}
    idents = identities if identities is not None else fleet_identities(spec)
    devices = []
    for ident in idents:
        meter = Meter(
            ident,
            seed=spec.seed,
            start=start,
            config=spec.config,
            faults=faults.get(ident.meter_id, ()),
        )
        devices.append(
            Device(
                meter,
                Transmitter(ident.meter_id, batch=spec.batch, fmt=spec.fmt),
                keypad=Keypad(ident.sts, medium_of(ident)) if ident.sts is not None else None,
            )
        )
    return devices


async def run_fleet(
    devices: Sequence[Device],
    *,
    clock: SimClock,
    stop: asyncio.Event,
    truth: GroundTruth,
    broker: BrokerAddress | None,
    topics: Topics,
    per_connection: int = 1,
    modbus_host: str = "127.0.0.1",
    modbus_port: int | None = None,
    modbus_units_per_port: int = 50,
    modbus_options: Mapping[str, float] | None = None,
    session_expiry: int = 2 * 86400,
    link_prefix: str = "sim",
    ready: asyncio.Event | None = None,
    progress_every_s: float | None = None,
    provisioning: ProvisionedKeys | None = None,
) -> list[MqttLink]:
    """Run the fleet until ``stop`` is set (logging progress every ``progress_every_s``)."""
    mqtt_devices = [d for d in devices if d.meter.identity.transport is Transport.MQTT]
    modbus_devices = [d for d in devices if d.meter.identity.transport is Transport.MODBUS]
    links: list[MqttLink] = []
    if mqtt_devices:
        if broker is None:
            raise UsageError("MQTT meters need a broker URL")
        size = max(1, per_connection)
        for number, first in enumerate(range(0, len(mqtt_devices), size)):
            links.append(
                MqttLink(
                    f"{link_prefix}-{number:04d}",
                    mqtt_devices[first : first + size],
                    broker=broker,
                    topics=topics,
                    clock=clock,
                    records=truth.write,
                    session_expiry=session_expiry,
                )
            )
    for link in links:
        link.provisioning = provisioning
    if modbus_devices and modbus_port is None:
        raise UsageError("Modbus meters need --modbus-port")
    # Connect in modest parallel waves: thousands of simultaneous CONNECTs overwhelm loopback.
    for first in range(0, len(links), 50):
        await asyncio.gather(*(link.connect() for link in links[first : first + 50]))
    log.info("%d MQTT links connected for %d meters", len(links), len(mqtt_devices))
    async with asyncio.TaskGroup() as group:
        for link in links:
            group.create_task(link.ticks(stop), name=f"mqtt-{link.link_id}-ticks")
            group.create_task(link.inbox(stop), name=f"mqtt-{link.link_id}-inbox")
        if modbus_devices:
            assert modbus_port is not None
            group.create_task(
                serve_modbus(
                    modbus_devices,
                    clock=clock,
                    stop=stop,
                    truth=truth,
                    host=modbus_host,
                    first_port=modbus_port,
                    units_per_port=modbus_units_per_port,
                    options=modbus_options or {},
                    ready=None,
                ),
                name="modbus",
            )
        if progress_every_s:
            group.create_task(
                _report_progress(links, truth, stop, progress_every_s), name="progress"
            )
        if ready is not None:
            ready.set()
    return links


@dataclass(slots=True)
class Progress:
    """Messages sent so far, and the rate since the previous report (pure; the task logs it)."""

    started: float
    last_time: float = 0.0
    last_sent: int = 0

    def report(self, sent: int, now: float) -> tuple[int, float, float]:
        """(messages since the last report, their rate per second, the rate since start)."""
        since = self.last_time or self.started
        delta = sent - self.last_sent
        rate = delta / (now - since) if now > since else 0.0
        overall = sent / (now - self.started) if now > self.started else 0.0
        self.last_time, self.last_sent = now, sent
        return delta, rate, overall


async def _report_progress(
    links: Sequence[MqttLink], truth: GroundTruth, stop: asyncio.Event, every_s: float
) -> None:
    loop = asyncio.get_running_loop()
    progress = Progress(started=loop.time())
    while not stop.is_set():
        try:
            async with asyncio.timeout(every_s):
                await stop.wait()
            return
        except TimeoutError:
            pass
        sent = sum(link.sent_messages for link in links)
        delta, rate, _ = progress.report(sent, loop.time())
        log.info(
            "sent %d MQTT messages (+%d, %.0f/s); %d/%d links connected; %d fault records",
            sent, delta, rate, sum(link.connected for link in links), len(links),
            len(truth.records),
        )  # fmt: skip
