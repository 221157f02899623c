"""The polling loop of one Modbus TCP endpoint and the devices behind it.

An :class:`Endpoint` owns one connection (:class:`~gateway.modbus.client.EndpointClient`) and
polls its devices one at a time, earliest due first. Each poll reads the device's planned
blocks (:func:`protocols.modbus.plan_reads`) and turns them into readings stamped with the poll
time (UTC), submitted through the ingest pipeline like MQTT telemetry.

Outcomes, counted in ``gateway_modbus_polls{result}``:

* ``ok`` — readings submitted (values failing validation are dead-lettered, the rest stored);
* ``invalid`` — the device answered, but every value failed validation (dead-lettered);
* ``busy`` (exception 6), ``timeout``, ``failed`` (connection, other exception codes, garbled
  answer) — the poll yields *no* reading, never a zero (§9), and the device backs off
  exponentially (with jitter, capped) but is never polled more often than its interval.

Exception 2 is not a failure: the device does not implement a register of its map. A block
bridging a hole is re-read without bridging, a gap-free block register by register; registers
refused alone are dropped from the device's plan until its registry row changes.

A failing device is logged once at error level (busy: warning), then quietly until it recovers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

from gateway.ingest.work import DeadLetter, Work
from gateway.metrics import Metrics
from gateway.modbus.client import EndpointClient
from gateway.modbus.errors import (
    IllegalAddressError,
    ModbusBusyError,
    ModbusError,
    ModbusTimeoutError,
)
from gateway.modbus.registry import DeviceConfig
from protocols.errors import PayloadError
from protocols.modbus import ReadBlock, Rejection, decode_block, plan_reads
from protocols.telemetry import Quality, Reading

__all__ = ["DeviceState", "Endpoint", "PollerOptions", "WorkSink", "backoff_delay"]

log = logging.getLogger(__name__)

_MEASURED: Final = Quality.MEASURED.value


class WorkSink(Protocol):
    """Where polled readings go: :class:`gateway.ingest.pipeline.IngestPipeline`."""

    async def submit(self, work: Work) -> asyncio.Future[None]: ...


@dataclass(frozen=True, slots=True)
class PollerOptions:
    concurrency: int = 64
    """Endpoints with a poll (or connect) in flight at once."""
    request_timeout_s: float = 2.0
    connect_timeout_s: float = 3.0
    pacing_s: float = 0.0
    """Minimum pause between an answer and the next request on one connection."""
    interval_s: float | None = None
    """Poll every device this often instead of its ``reporting_interval_s`` (benchmarks)."""
    max_gap: int = 8
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    reconnect_after_timeouts: int = 3
    """Consecutive timeouts (any device) after which the connection is dropped and reopened:
    a half-open TCP connection otherwise only ever times out."""


def backoff_delay(failures: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random."""
    step = min(maximum, initial * 2.0 ** min(failures - 1, 30))
    return step / 2 + rng.uniform(0, step / 2)


@dataclass(slots=True)
class DeviceState:
    config: DeviceConfig
    next_due: float
    max_gap: int
    failures: int = 0
    logged: bool = False
    """A failure of the current run of failures was logged (so the recovery is too)."""
    bridge_gaps: bool = True
    unimplemented: set[int] = field(default_factory=set)
    blocks: tuple[ReadBlock, ...] = ()
    replan_needed: bool = False
    rejecting: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.replan()

    def replan(self) -> None:
        specs = [
            r for r in self.config.register_map.registers if r.address not in self.unimplemented
        ]
        self.blocks = plan_reads(specs, max_gap=self.max_gap if self.bridge_gaps else 0)
        self.replan_needed = False


class _NothingImplementedError(ModbusError):
    """The device refuses every register of its map (a registry/map mistake)."""


class Endpoint:
    """Polls the devices behind one ``host:port`` over one connection, one at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        options: PollerOptions,
        semaphore: asyncio.Semaphore,
        sink: WorkSink,
        metrics: Metrics,
        rng: random.Random,
    ) -> None:
        self.name = f"{host}:{port}"
        self.client = EndpointClient(
            host,
            port,
            connect_timeout_s=options.connect_timeout_s,
            request_timeout_s=options.request_timeout_s,
            pacing_s=options.pacing_s,
        )
        self.devices: dict[str, DeviceState] = {}
        self._options = options
        self._semaphore = semaphore
        self._sink = sink
        self._metrics = metrics
        self._rng = rng
        self._wake = asyncio.Event()
        self._closing = False
        self._connect_failures = 0
        self._next_connect = 0.0
        self._timeouts_in_row = 0
        self.polls = 0

    def update(self, configs: Mapping[str, DeviceConfig]) -> None:
        """Poll exactly ``configs`` from now on; changed devices are re-planned."""
        now = asyncio.get_running_loop().time()
        for meter_id in self.devices.keys() - configs.keys():
            del self.devices[meter_id]
        for meter_id, config in configs.items():
            state = self.devices.get(meter_id)
            if state is None or state.config != config:
                due = now if state is None else min(state.next_due, now + self._interval(config))
                self.devices[meter_id] = DeviceState(config, due, self._options.max_gap)
        self._wake.set()

    def close(self) -> None:
        """Stop after the poll in progress; :meth:`run` then closes the connection."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                if self._closing:
                    return
                if not self.devices:
                    await self._wake.wait()
                    continue
                device = min(self.devices.values(), key=lambda d: d.next_due)
                start = device.next_due
                if not self.client.connected:
                    start = max(start, self._next_connect)
                delay = start - loop.time()
                if delay > 0:
                    await self._sleep(delay)
                    continue
                if not self.client.connected:
                    async with self._semaphore:
                        connected = await self._connect()
                    if not connected:
                        continue
                work = await self._poll(device)  # takes the semaphore per request
                if work is not None:
                    await self._sink.submit(work)
        finally:
            self.client.close()

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds or until the device list changes or we are closed."""
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _interval(self, config: DeviceConfig) -> float:
        override = self._options.interval_s
        return config.interval_s if override is None else override

    async def _connect(self) -> bool:
        try:
            await self.client.connect()
        except ModbusError as exc:
            now = asyncio.get_running_loop().time()
            self._connect_failures += 1
            opts = self._options
            self._next_connect = now + backoff_delay(
                self._connect_failures, opts.backoff_initial_s, opts.backoff_max_s, self._rng
            )
            if self._connect_failures == 1:
                log.error("Modbus endpoint %s unreachable: %s", self.name, exc)
            # Every device due now misses its poll (not logged one by one: the endpoint was).
            for device in self.devices.values():
                if device.next_due <= now:
                    self._failed(device, exc, now, log_it=False)
            return False
        if self._connect_failures:
            log.info(
                "Modbus endpoint %s reachable again after %d attempts",
                self.name,
                self._connect_failures,
            )
        self._connect_failures = 0
        self._timeouts_in_row = 0
        return True

    async def _poll(self, device: DeviceState) -> Work | None:
        """Read one device; the work to submit, or None when the poll yields no reading."""
        config = device.config
        ts = datetime.now(UTC)
        values: dict[str, float] = {}
        rejected: list[Rejection] = []
        self.polls += 1
        failure: ModbusError | PayloadError | None = None
        try:
            for block in device.blocks:
                # A block that fails ends the poll (a busy or silent device is not pressed
                # further), but what earlier blocks read is kept: missing data, not a lost poll.
                await self._read(device, block, values, rejected)
            if not values and not rejected:
                raise _NothingImplementedError(
                    f"unit {config.unit} at {self.name} implements none of the mapped registers"
                )
        except (ModbusError, PayloadError) as exc:
            failure = exc
        finally:
            if device.replan_needed:
                device.replan()
        now = asyncio.get_running_loop().time()
        if failure is not None:
            self._failed(device, failure, now)
            if not values and not rejected:
                return None
        else:
            self._succeeded(device, now)
        topic = f"modbus/{config.meter_id}"
        readings = [
            Reading(config.meter_id, ts, channel, value, None, _MEASURED)
            for channel, value in values.items()
        ]
        if failure is None:
            self._metrics.modbus_polls.labels(result="ok" if readings else "invalid").inc()
        return Work(
            topic=topic,
            payload=b"",
            kind="modbus",
            readings=readings,
            dead=self._dead(device, rejected),
        )

    async def _read(
        self,
        device: DeviceState,
        block: ReadBlock,
        values: dict[str, float],
        rejected: list[Rejection],
    ) -> None:
        config = device.config
        try:
            # Pause for the device's pacing before taking a concurrency slot, so that a paced
            # device does not hold a slot other endpoints could use while it waits.
            await self.client.wait_for_pacing()
            async with self._semaphore:
                registers = await self.client.read_input_registers(
                    config.unit, block.address, block.count
                )
        except IllegalAddressError:
            self._timeouts_in_row = 0
            device.replan_needed = True
            if len(block.registers) == 1:
                device.unimplemented.add(block.registers[0].address)
                return
            if block.has_gaps:
                device.bridge_gaps = False
                parts = plan_reads(block.registers, max_gap=0)
            else:
                parts = tuple(plan_reads((r,))[0] for r in block.registers)
            for part in parts:
                await self._read(device, part, values, rejected)
            return
        except ModbusTimeoutError:
            self._timeouts_in_row += 1
            if self._timeouts_in_row >= self._options.reconnect_after_timeouts:
                log.warning(
                    "Modbus endpoint %s: %d timeouts in a row, reconnecting",
                    self.name,
                    self._timeouts_in_row,
                )
                self.client.close()
                self._timeouts_in_row = 0
            raise
        except ModbusError as exc:
            if not isinstance(exc, ModbusBusyError):
                self._timeouts_in_row = 0
            if not self.client.connected:
                self.client.close()
            raise
        self._timeouts_in_row = 0
        decoded = decode_block(block, registers, config.word_order)
        values.update(decoded.values)
        rejected.extend(decoded.rejected)

    def _dead(self, device: DeviceState, rejected: list[Rejection]) -> DeadLetter | None:
        channels = frozenset(r.channel for r in rejected)
        if channels != device.rejecting and channels:
            log.warning(
                "Modbus meter %s sent invalid values: %s",
                device.config.meter_id,
                "; ".join(r.detail for r in rejected),
                extra={"meter_id": device.config.meter_id},
            )
        device.rejecting = channels
        if not rejected:
            return None
        for r in rejected:
            self._metrics.dead_letters.labels(reason=r.reason).inc()
        topic = f"modbus/{device.config.meter_id}"
        detail = "; ".join(f"{r.channel} @{r.address:#06x}: {r.detail}" for r in rejected)
        payload = b"".join(r.raw for r in rejected)
        return DeadLetter(topic, payload, rejected[0].reason, detail[:500])

    def _succeeded(self, device: DeviceState, now: float) -> None:
        if device.logged:
            log.info(
                "Modbus meter %s answers again after %d failed polls",
                device.config.meter_id,
                device.failures,
                extra={"meter_id": device.config.meter_id},
            )
        device.failures = 0
        device.logged = False
        due = device.next_due + self._interval(device.config)
        device.next_due = max(due, now)

    def _failed(
        self, device: DeviceState, exc: Exception, now: float, *, log_it: bool = True
    ) -> None:
        result = exc.result if isinstance(exc, ModbusError) else "failed"
        self._metrics.modbus_polls.labels(result=result).inc()
        device.failures += 1
        if log_it and not device.logged:
            device.logged = True
            log.log(
                logging.WARNING if isinstance(exc, ModbusBusyError) else logging.ERROR,
                "Modbus meter %s: no reading (%s): %s; retrying quietly",
                device.config.meter_id,
                result,
                exc,
                extra={"meter_id": device.config.meter_id},
            )
        else:
            log.debug("Modbus meter %s: %s", device.config.meter_id, exc)
        opts = self._options
        delay = backoff_delay(
            device.failures, opts.backoff_initial_s, opts.backoff_max_s, self._rng
        )
        device.next_due = now + max(self._interval(device.config), delay)
