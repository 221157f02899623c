"""The Modbus poller: the registry's Modbus meters, grouped into one loop per endpoint.

:func:`run_modbus_poller` is meant to run as a named task in the service's ``TaskGroup``. It
reloads the device list every ``refresh_s`` (so newly registered meters get polled and removed
ones stop), groups devices by ``(host, port)`` and keeps one :class:`Endpoint` task per endpoint
in its own ``TaskGroup`` — one TCP connection each, requests serialised on it. A semaphore bounds
how many endpoints have a request or connect in flight at once.

When ``stop`` is set, every endpoint finishes the poll in progress, submits it and closes its
connection; the function returns after that. Stop it *before* closing the ingest pipeline so
that those last readings are still written.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.metrics import Metrics
from gateway.modbus.allowlist import DEFAULT_ALLOW_LIST, HostAllowList
from gateway.modbus.endpoint import Endpoint, PollerOptions, WorkSink
from gateway.modbus.registry import DeviceConfig, LoadedDevices, load_devices
from protocols.modbus import DEFAULT_MAX_GAP

__all__ = ["DeviceLoader", "ModbusPoller", "run_modbus_poller"]

log = logging.getLogger(__name__)

DeviceLoader = Callable[[], Awaitable[LoadedDevices]]


class ModbusPoller:
    """Keeps one :class:`Endpoint` task per endpoint in step with the device list."""

    def __init__(
        self,
        *,
        load: DeviceLoader,
        sink: WorkSink,
        metrics: Metrics,
        options: PollerOptions,
        rng: random.Random | None = None,
        allowed: HostAllowList = DEFAULT_ALLOW_LIST,
    ) -> None:
        if options.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._load = load
        self._sink = sink
        self._metrics = metrics
        self._options = options
        self._allowed = allowed
        # Backoff jitter only; not security relevant.
        self._rng = rng or random.Random()  # noqa: S311
        self._semaphore = asyncio.Semaphore(options.concurrency)
        self.endpoints: dict[tuple[str, int], Endpoint] = {}
        self._invalid: dict[str, str] = {}
        self._load_failing = False

    async def run(self, stop: asyncio.Event, *, refresh_s: float) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                while not stop.is_set():
                    await self.refresh(group)
                    try:
                        async with asyncio.timeout(refresh_s):
                            await stop.wait()
                    except TimeoutError:
                        pass
                for endpoint in self.endpoints.values():
                    endpoint.close()
        finally:
            self.endpoints.clear()

    async def refresh(self, group: asyncio.TaskGroup) -> None:
        """Reload the device list; on a database error keep polling the current one."""
        try:
            loaded = await self._load()
        except psycopg.Error as exc:
            if not self._load_failing:
                log.error("cannot load Modbus meters, keeping the current list: %s", exc)
            self._load_failing = True
            return
        if self._load_failing:
            log.info("Modbus meter list loaded again")
        self._load_failing = False
        for meter_id, reason in loaded.invalid.items():
            if self._invalid.get(meter_id) != reason:
                log.error(
                    "Modbus meter %s not polled: %s", meter_id, reason, extra={"meter_id": meter_id}
                )
        self._invalid = dict(loaded.invalid)
        self.apply(loaded.devices, group)

    def apply(self, devices: Mapping[str, DeviceConfig], group: asyncio.TaskGroup) -> None:
        by_endpoint: dict[tuple[str, int], dict[str, DeviceConfig]] = {}
        for config in devices.values():
            if not self._allowed.allows_address(config.host):  # the last check before connecting
                if config.meter_id not in self._invalid:
                    log.error(
                        "Modbus meter %s not polled: %s is not an allowed address",
                        config.meter_id,
                        config.host,
                        extra={"meter_id": config.meter_id},
                    )
                    self._invalid[config.meter_id] = "address not allowed"
                continue
            by_endpoint.setdefault(config.endpoint, {})[config.meter_id] = config
        for key in self.endpoints.keys() - by_endpoint.keys():
            self.endpoints.pop(key).close()
        for key, configs in by_endpoint.items():
            endpoint = self.endpoints.get(key)
            if endpoint is None:
                endpoint = Endpoint(
                    *key,
                    options=self._options,
                    semaphore=self._semaphore,
                    sink=self._sink,
                    metrics=self._metrics,
                    rng=self._rng,
                )
                self.endpoints[key] = endpoint
                group.create_task(endpoint.run(), name=f"modbus-endpoint-{endpoint.name}")
                log.info("polling Modbus endpoint %s (%d meters)", endpoint.name, len(configs))
            endpoint.update(configs)


async def run_modbus_poller(
    *,
    pool: AsyncConnectionPool[Any],
    pipeline: WorkSink,
    metrics: Metrics,
    stop: asyncio.Event,
    refresh_s: float = 30.0,
    concurrency: int = 64,
    request_timeout_s: float = 2.0,
    connect_timeout_s: float = 3.0,
    pacing_s: float = 0.0,
    interval_s: float | None = None,
    max_gap: int = DEFAULT_MAX_GAP,
    backoff_initial_s: float = 1.0,
    backoff_max_s: float = 300.0,
    verified_only: bool = False,
    allowed: HostAllowList = DEFAULT_ALLOW_LIST,
) -> None:
    """Poll the registry's Modbus meters until ``stop`` is set.

    ``interval_s`` overrides every meter's ``reporting_interval_s`` (benchmarks, tests);
    ``verified_only`` skips meters not yet verified by an operator.
    """

    async def load() -> LoadedDevices:
        return await load_devices(pool, verified_only=verified_only, allowed=allowed)

    options = PollerOptions(
        concurrency=concurrency,
        request_timeout_s=request_timeout_s,
        connect_timeout_s=connect_timeout_s,
        pacing_s=pacing_s,
        interval_s=interval_s,
        max_gap=max_gap,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
    )
    poller = ModbusPoller(
        load=load, sink=pipeline, metrics=metrics, options=options, allowed=allowed
    )
    log.info("Modbus poller started")
    await poller.run(stop, refresh_s=refresh_s)
    log.info("Modbus poller stopped")
