"""Async Modbus TCP shell: pymodbus servers answering FC04 from the simulated meters.

One pymodbus server holds at most 247 unit ids, so devices are spread over consecutive ports:
device ``k`` of the Modbus group is unit ``k % units_per_port + 1`` on port
``first_port + k // units_per_port`` (50 units per port by default; 500 devices -> 10 ports).

The datastore is :class:`MeterContext`, a ``ModbusServerContext`` that answers from the meters'
current register image (pymodbus 3.16 dispatches to ``async_getValues`` of a context flagged
``old_simulator``). Options: ``pacing_s`` (a device needs that long per request; requests on
one port are served one at a time), ``busy`` (probability of exception 6). Unknown units and
meters in a comms-loss fault do not answer at all (the poller times out). A ``modbus-ticks``
task steps the meters on simulated time and writes their fault records.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from firmware_sim.clock import SimClock
from firmware_sim.device import Device
from firmware_sim.faults import FaultKind
from firmware_sim.modbus_map import register_image
from firmware_sim.truth import GroundTruth
from protocols.errors import UsageError

__all__ = ["MeterContext", "serve_modbus"]

log = logging.getLogger(__name__)

READ_INPUT_REGISTERS = 4


class MeterContext(ModbusServerContext):
    """Unit id -> simulated meter, answering reads from its live register image."""

    def __init__(
        self, units: Mapping[int, Device], *, pacing_s: float = 0.0, busy: float = 0.0, seed: int
    ) -> None:
        # Deliberately not calling super().__init__: it wants pymodbus datastores.
        self.units = dict(units)
        self.old_simulator = True
        self.simdevices = []
        self.pacing_s = pacing_s
        self.busy = busy
        self.rng = random.Random(f"modbus-busy|{seed}")  # noqa: S311 -- simulation only
        self.lock = asyncio.Lock()
        self.requests = 0

    def device_ids(self) -> list[int]:
        return list(self.units)

    async def async_getValues(  # noqa: N802  (pymodbus API name)
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | ExcCodes:
        device = self.units.get(device_id)
        if device is None or FaultKind.COMMS_LOSS in device.meter.active:
            raise NoSuchIdException(f"unit {device_id} does not answer")
        self.requests += 1
        if func_code != READ_INPUT_REGISTERS:
            return ExcCodes.ILLEGAL_FUNCTION
        if self.pacing_s > 0:
            async with self.lock:
                await asyncio.sleep(self.pacing_s)
        if self.busy > 0 and self.rng.random() < self.busy:
            return ExcCodes.DEVICE_BUSY
        meter = device.meter
        image = register_image(meter.values, meter.identity.utility, meter.identity.word_order)
        try:
            return [image[a] for a in range(address, address + count)]
        except KeyError:
            return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(  # noqa: N802  (pymodbus API name)
        self, device_id: int, func_code: int, address: int, values: Sequence[int]
    ) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_FUNCTION


def modbus_layout(count: int, first_port: int, units_per_port: int) -> list[tuple[int, int]]:
    """(port, unit) of each of ``count`` devices."""
    if not 1 <= units_per_port <= 247:
        raise ValueError("units per port must be 1..247")
    return [(first_port + k // units_per_port, k % units_per_port + 1) for k in range(count)]


async def serve_modbus(
    devices: Sequence[Device],
    *,
    clock: SimClock,
    stop: asyncio.Event,
    truth: GroundTruth,
    host: str,
    first_port: int,
    units_per_port: int,
    options: Mapping[str, float],
    ready: asyncio.Event | None,
) -> None:
    """Serve ``devices`` until ``stop``; step them on simulated time meanwhile."""
    ports: dict[int, dict[int, Device]] = {}
    for device, (port, unit) in zip(
        devices, modbus_layout(len(devices), first_port, units_per_port), strict=True
    ):
        ports.setdefault(port, {})[unit] = device
    servers: list[ModbusTcpServer] = []
    try:
        for port, units in ports.items():
            context = MeterContext(
                units,
                pacing_s=options.get("pacing_s", 0.0),
                busy=options.get("busy", 0.0),
                seed=port,
            )
            server = ModbusTcpServer(context, address=(host, port), ignore_missing_devices=True)
            servers.append(server)
            try:
                await server.serve_forever(background=True)
            except RuntimeError as exc:  # pymodbus: "Could not start listen" (port taken …)
                raise UsageError(f"cannot serve Modbus on {host}:{port}: {exc}") from exc
        log.info("Modbus: %d devices on ports %d-%d", len(devices), first_port, max(ports))
        if ready is not None:
            ready.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(_step(devices, clock, stop, truth), name="modbus-ticks")
    finally:
        for server in servers:
            await server.shutdown()  # type: ignore[no-untyped-call]


async def _step(
    devices: Sequence[Device], clock: SimClock, stop: asyncio.Event, truth: GroundTruth
) -> None:
    while not stop.is_set():
        now = clock.now()
        for device in devices:
            records = device.meter.step(now).records
            if records:
                truth.write(records)
        try:
            async with asyncio.timeout(min(1.0, max(0.05, clock.wall_delay(now)))):
                await stop.wait()
        except TimeoutError:
            continue
    now = clock.now()
    for device in devices:
        truth.write(device.meter.finish(now))
