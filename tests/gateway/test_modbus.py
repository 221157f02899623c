"""Modbus TCP polling end to end: real pymodbus servers on loopback, real PostgreSQL.

Each test starts its own small Modbus servers (the §9 register map, several unit ids, different
word orders), registers the meters as ``transport = 'modbus'`` in a migrated database of its
own, and runs the poller with a real ingest pipeline writing through ``write_batch``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from gateway.ingest.pipeline import IngestPipeline, PipelineLimits
from gateway.ingest.work import Work
from gateway.ingest.writer import STAGING_DDL, BatchResult, write_batch
from gateway.metrics import Metrics
from gateway.modbus import (
    DeviceConfig,
    LoadedDevices,
    ModbusPoller,
    PollerOptions,
    device_from_row,
    run_modbus_poller,
)
from protocols.errors import UsageError
from protocols.modbus import DEFAULT_MAP, WordOrder, encode_float32
from tests.plugins.gateway import wait_for_value

# Values exactly representable in float32, so the stored double is the hand-computed value.
ELECTRICITY = {
    0x0000: 230.0,  # 32.7.0 V       0x43660000
    0x0002: 231.5,  # 52.7.0 V       0x43678000
    0x0004: 229.25,  # 72.7.0 V      0x43654000
    0x0006: 5.25,  # 31.7.0 A
    0x0008: 4.5,  # 51.7.0 A
    0x000A: 0.75,  # 71.7.0 A
    0x000C: 1500.0,  # 21.7.0 W -> 1.5 kW
    0x000E: -250.0,  # 41.7.0 W -> -0.25 kW
    0x0010: 0.0,  # 61.7.0 W -> 0.0 kW (a real zero)
    0x0034: 1250.0,  # 1.7.0 W -> 1.25 kW
    0x0046: 50.0,  # 14.7.0 Hz
    0x0048: 12345.5,  # 1.8.0 kWh      0x4640E600
    0x004A: 17.125,  # 2.8.0 kWh
    0x0104: 42.5,  # credit
    0x0200: 1.0,  # 96.3.10 relay connected
}
EXPECTED_ELECTRICITY = {
    "32.7.0": 230.0,
    "52.7.0": 231.5,
    "72.7.0": 229.25,
    "31.7.0": 5.25,
    "51.7.0": 4.5,
    "71.7.0": 0.75,
    "21.7.0": 1.5,
    "41.7.0": -0.25,
    "61.7.0": 0.0,
    "1.7.0": 1.25,
    "14.7.0": 50.0,
    "1.8.0": 12345.5,
    "2.8.0": 17.125,
    "credit": 42.5,
    "96.3.10": 1.0,
}
WATER = {0x0100: 1234.5, 0x0102: 12.0, 0x0202: 1.0}
EXPECTED_WATER = {"24.2.1": 1234.5, "water.flow": 12.0, "24.4.0": 1.0}


def register_image(values: Mapping[int, float], order: WordOrder) -> dict[int, int]:
    image: dict[int, int] = {}
    for address, value in values.items():
        image[address], image[address + 1] = encode_float32(value, order)
    return image


class FakeMeters(ModbusServerContext):
    """Unit id -> register image; per-unit ``busy`` and ``silent`` switches; request counts.

    pymodbus 3.16 dispatches to ``async_getValues`` of a context flagged ``old_simulator``.
    Reads touching a register outside the image answer exception 2, like the §9 devices.
    """

    def __init__(self) -> None:  # no super().__init__: it wants pymodbus datastores
        self.old_simulator = True
        self.simdevices: list[Any] = []
        self.images: dict[int, dict[int, int]] = {}
        self.busy: set[int] = set()
        self.busy_from: dict[int, int] = {}
        """unit -> first register address that answers busy (a device busy mid-poll)."""
        self.silent: set[int] = set()
        self.requests: Counter[int] = Counter()

    def device_ids(self) -> list[int]:
        return list(self.images)

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | ExcCodes:
        if device_id not in self.images or device_id in self.silent:
            raise NoSuchIdException(f"unit {device_id} does not answer")
        self.requests[device_id] += 1
        if func_code != 4:
            return ExcCodes.ILLEGAL_FUNCTION
        if device_id in self.busy or address >= self.busy_from.get(device_id, 1 << 16):
            return ExcCodes.DEVICE_BUSY
        image = self.images[device_id]
        try:
            return [image[a] for a in range(address, address + count)]
        except KeyError:
            return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int]
    ) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_FUNCTION


@dataclass
class FakeServer:
    context: FakeMeters
    port: int = 0
    connections: list[bool] = field(default_factory=list)
    server: ModbusTcpServer | None = None

    async def start(self) -> None:
        self.server = ModbusTcpServer(
            self.context,
            address=("127.0.0.1", self.port),
            ignore_missing_devices=True,  # unknown/silent units time out, as on a real bus
            trace_connect=self.connections.append,
        )
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


@asynccontextmanager
async def modbus_server(units: Mapping[int, dict[int, int]]) -> AsyncIterator[FakeServer]:
    context = FakeMeters()
    context.images.update(units)
    server = FakeServer(context)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def register_meter(
    url: str,
    meter_id: str,
    port: int,
    unit: int,
    order: str | None = "ABCD",
    register_map: dict[str, Any] | None = None,
) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO meters (meter_id, utility, transport, verified, reporting_interval_s,"
            " modbus_host, modbus_port, modbus_unit, modbus_word_order, register_map)"
            " VALUES (%s, 'electricity', 'modbus', true, 900, '127.0.0.1', %s, %s, %s, %s)",
            (meter_id, port, unit, order, Jsonb(register_map) if register_map else None),
        )


def readings_of(url: str, meter_id: str) -> list[tuple[str, float, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT channel, value, ts FROM readings WHERE meter_id = %s ORDER BY ts, channel",
            (meter_id,),
        ).fetchall()
    return [(str(c), float(v), t) for c, v, t in rows]


def latest_poll(url: str, meter_id: str) -> dict[str, float]:
    rows = readings_of(url, meter_id)
    if not rows:
        return {}
    last = rows[-1][2]
    return {c: v for c, v, t in rows if t == last}


def polls(metrics: Metrics, result: str) -> float:
    return float(metrics.modbus_polls.labels(result=result)._value.get())


@dataclass
class Harness:
    url: str
    pool: AsyncConnectionPool[Any]
    pipeline: IngestPipeline
    metrics: Metrics

    @asynccontextmanager
    async def poller(self, **options: Any) -> AsyncIterator[None]:
        """Run :func:`run_modbus_poller` (fast test settings) until the block ends."""
        settings: dict[str, Any] = {
            "refresh_s": 0.2,
            "interval_s": 0.1,
            "request_timeout_s": 0.3,
            "connect_timeout_s": 0.5,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 1.0,
        }
        settings.update(options)
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_modbus_poller(
                pool=self.pool, pipeline=self.pipeline, metrics=self.metrics, stop=stop, **settings
            ),
            name="test-modbus-poller",
        )
        try:
            yield
            assert not task.done(), task
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(STAGING_DDL)
        await conn.commit()

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=3, configure=configure, open=False
    )
    await pool.open(wait=True)
    metrics = Metrics()

    async def write(batch: Sequence[Work]) -> BatchResult:
        async with pool.connection() as conn:
            return await write_batch(conn, batch)

    pipeline = IngestPipeline(write, PipelineLimits(max_age_s=0.02), metrics)
    flush = asyncio.create_task(pipeline.run(), name="test-ingest-flush")
    try:
        yield Harness(database_url, pool, pipeline, metrics)
    finally:
        await pipeline.close()
        await asyncio.wait_for(flush, 10)
        await pool.close()


async def test_word_orders_and_scaling_end_to_end(harness: Harness) -> None:
    url = harness.url
    units_a = {
        1: register_image(ELECTRICITY, WordOrder.ABCD),
        2: register_image(ELECTRICITY, WordOrder.CDAB),
        3: register_image(ELECTRICITY, WordOrder.BADC),
    }
    async with (
        modbus_server(units_a) as a,
        modbus_server({7: register_image(WATER, WordOrder.DCBA)}) as b,
    ):
        register_meter(url, "E-ABCD", a.port, 1, "ABCD")
        register_meter(url, "E-CDAB", a.port, 2, "CDAB")
        register_meter(url, "E-BADC", a.port, 3, "BADC")
        register_meter(url, "W-DCBA", b.port, 7, "DCBA")
        async with harness.poller():
            for meter in ("E-ABCD", "E-CDAB", "E-BADC"):
                got = await wait_for_value(
                    lambda m=meter: latest_poll(url, m), EXPECTED_ELECTRICITY
                )
                assert got == EXPECTED_ELECTRICITY, meter
            got = await wait_for_value(lambda: latest_poll(url, "W-DCBA"), EXPECTED_WATER)
            assert got == EXPECTED_WATER
        # Three meters behind one endpoint share one TCP connection.
        assert a.connections.count(True) == 1
        assert b.connections.count(True) == 1
    # Polled readings advance last_seen through the pipeline's writer like MQTT ones.
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM meters WHERE transport = 'modbus' AND last_seen IS NOT NULL"
        ).fetchone()
    assert row == (4,)
    assert polls(harness.metrics, "ok") >= 4
    assert polls(harness.metrics, "failed") == 0


async def test_unimplemented_registers_are_learned_not_failed(harness: Harness) -> None:
    """A single-phase meter without L2/L3 or water registers: exception 2 drops them (§9)."""
    url = harness.url
    single_phase = {a: v for a, v in ELECTRICITY.items() if a not in (0x0002, 0x0004, 0x0008)}
    async with modbus_server({5: register_image(single_phase, WordOrder.ABCD)}) as server:
        register_meter(url, "E-1P", server.port, 5)
        async with harness.poller():
            await wait_for_value(lambda: len(readings_of(url, "E-1P")) >= 3 * 12, True)
            before = server.context.requests[5]
            polls_before = polls(harness.metrics, "ok")
            await wait_for_value(lambda: polls(harness.metrics, "ok") >= polls_before + 5, True)
            requests = server.context.requests[5] - before
            done = polls(harness.metrics, "ok") - polls_before
    expected = {
        c: v for c, v in EXPECTED_ELECTRICITY.items() if c not in ("52.7.0", "72.7.0", "51.7.0")
    }
    assert latest_poll(url, "E-1P") == expected
    assert polls(harness.metrics, "failed") == 0
    # Learned plan: [0,1] [6,7] [10,17] [0x34] [0x46..0x4B] [0x104] [0x200] = 7 reads per poll.
    assert requests / done == pytest.approx(7, abs=1)


async def test_a_block_busy_mid_poll_keeps_what_was_read(harness: Harness) -> None:
    """Busy is missing data (DOMAIN §3): values read before the busy block are stored."""
    url = harness.url
    async with modbus_server({4: register_image(ELECTRICITY, WordOrder.ABCD)}) as server:
        server.context.busy_from[4] = 0x0034  # voltages, currents, phase powers answer
        register_meter(url, "E-HALF", server.port, 4)
        async with harness.poller():
            await wait_for_value(lambda: polls(harness.metrics, "busy") >= 2, True)
    stored = {channel for channel, _, _ in readings_of(url, "E-HALF")}
    assert {"32.7.0", "31.7.0", "21.7.0"} <= stored
    assert stored.isdisjoint({"1.7.0", "14.7.0", "1.8.0", "2.8.0", "credit", "96.3.10"})
    assert latest_poll(url, "E-HALF")["32.7.0"] == EXPECTED_ELECTRICITY["32.7.0"]


async def test_busy_device_yields_no_reading_and_is_counted(harness: Harness) -> None:
    url = harness.url
    units = {
        1: register_image(ELECTRICITY, WordOrder.ABCD),
        2: register_image(ELECTRICITY, WordOrder.ABCD),
    }
    async with modbus_server(units) as server:
        server.context.busy.add(2)
        register_meter(url, "E-OK", server.port, 1)
        register_meter(url, "E-BUSY", server.port, 2)
        async with harness.poller():
            await wait_for_value(lambda: polls(harness.metrics, "busy") >= 3, True)
            # The healthy meter on the same connection keeps being polled meanwhile.
            assert latest_poll(url, "E-OK") == EXPECTED_ELECTRICITY
            assert readings_of(url, "E-BUSY") == []  # nothing at all, in particular no 0
            server.context.busy.clear()
            got = await wait_for_value(lambda: latest_poll(url, "E-BUSY"), EXPECTED_ELECTRICITY)
            assert got == EXPECTED_ELECTRICITY
    assert polls(harness.metrics, "busy") >= 3
    assert all(v != 0.0 or c == "61.7.0" for c, v, _ in readings_of(url, "E-BUSY"))


async def test_silent_device_backs_off_and_recovers(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    url = harness.url
    units = {
        1: register_image(ELECTRICITY, WordOrder.ABCD),
        2: register_image(ELECTRICITY, WordOrder.CDAB),
    }
    caplog.set_level(logging.INFO, logger="gateway.modbus")
    async with modbus_server(units) as server:
        register_meter(url, "E-LIVE", server.port, 1)
        register_meter(url, "E-MUTE", server.port, 2, "CDAB")
        server.context.silent.add(2)
        async with harness.poller(backoff_max_s=1.6):
            loop = asyncio.get_running_loop()
            started = loop.time()
            await wait_for_value(lambda: polls(harness.metrics, "timeout") >= 4, True)
            await asyncio.sleep(2.5)
            attempts = polls(harness.metrics, "timeout")
            elapsed = loop.time() - started
            live_before = len(readings_of(url, "E-LIVE"))
            # Without backoff the mute meter would be tried every 0.1 s + 0.3 s timeout.
            assert attempts < elapsed / 0.4 * 0.75
            assert readings_of(url, "E-MUTE") == []
            server.context.silent.clear()
            got = await wait_for_value(
                lambda: latest_poll(url, "E-MUTE"), EXPECTED_ELECTRICITY, timeout=10
            )
            assert got == EXPECTED_ELECTRICITY
            assert len(readings_of(url, "E-LIVE")) > 0 and live_before > 0
    failing = [
        r for r in caplog.records if "E-MUTE" in r.getMessage() and "no reading" in r.getMessage()
    ]
    assert len(failing) == 1 and failing[0].levelno == logging.ERROR  # once, then quiet
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_endpoint_restart_is_reconnected(harness: Harness) -> None:
    url = harness.url
    async with modbus_server({1: register_image(ELECTRICITY, WordOrder.ABCD)}) as server:
        register_meter(url, "E-R", server.port, 1)
        async with harness.poller():
            await wait_for_value(lambda: len(readings_of(url, "E-R")) > 0, True)
            await server.stop()
            await wait_for_value(lambda: polls(harness.metrics, "failed") >= 2, True)
            count = len(readings_of(url, "E-R"))
            await server.start()  # same port
            await wait_for_value(lambda: len(readings_of(url, "E-R")) > count, True, timeout=10)
        assert server.connections.count(True) >= 2


async def test_new_meters_and_map_overrides_are_picked_up(harness: Harness) -> None:
    url = harness.url
    custom = {300: 123456.0, 310: 230.0}  # Wh at 300, V at 310 on a non-SDM device
    units = {
        1: register_image(ELECTRICITY, WordOrder.ABCD),
        9: register_image(custom, WordOrder.CDAB),
    }
    async with modbus_server(units) as server:
        register_meter(url, "E-FIRST", server.port, 1)
        async with harness.poller():
            await wait_for_value(lambda: len(readings_of(url, "E-FIRST")) > 0, True)
            register_meter(
                url,
                "E-LATE",
                server.port,
                9,
                "CDAB",
                {"1.8.0": {"address": 300, "scale": 0.001}, "32.7.0": {"address": 310}},
            )
            got = await wait_for_value(
                lambda: latest_poll(url, "E-LATE"), {"1.8.0": 123.456, "32.7.0": 230.0}
            )
            assert got == {"1.8.0": 123.456, "32.7.0": 230.0}
        # The late meter shares the endpoint's existing connection.
        assert server.connections.count(True) == 1


async def test_invalid_values_are_dead_lettered_and_the_rest_stored(harness: Harness) -> None:
    url = harness.url
    broken = dict(ELECTRICITY)
    broken[0x0000] = 5000.0  # 5 kV: outside the channel's physical range
    image = register_image(broken, WordOrder.ABCD)
    image[0x0048], image[0x0049] = 0x7FC0, 0x0000  # NaN import register
    async with modbus_server({1: image}) as server:
        register_meter(url, "E-BAD", server.port, 1)
        async with harness.poller():
            await wait_for_value(lambda: len(readings_of(url, "E-BAD")) > 0, True)
    stored = latest_poll(url, "E-BAD")
    assert "32.7.0" not in stored and "1.8.0" not in stored
    assert stored["2.8.0"] == 17.125
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT topic, reason, payload, detail FROM dead_letters ORDER BY id LIMIT 1"
        ).fetchone()
    assert row is not None
    topic, reason, payload, detail = row
    assert topic == "modbus/E-BAD" and reason == "out_of_range"
    assert bytes(payload) == b"\x45\x9c\x40\x00\x7f\xc0\x00\x00"
    assert "1.8.0" in detail and "32.7.0" in detail


async def test_unreachable_endpoint_counts_failures_without_hammering(harness: Harness) -> None:
    """Nothing listens: polls of its meters fail and connects back off."""
    async with modbus_server({1: {}}) as server:
        port = server.port
    register_meter(harness.url, "E-GONE-1", port, 1)
    register_meter(harness.url, "E-GONE-2", port, 2)
    async with harness.poller(backoff_max_s=0.8):
        await wait_for_value(lambda: polls(harness.metrics, "failed") >= 4, True)
    assert readings_of(harness.url, "E-GONE-1") == []


def test_registry_rows_are_validated() -> None:
    ok = device_from_row(
        "M1",
        host="10.0.0.5",
        port=502,
        unit=3,
        word_order=None,
        register_map=None,
        interval_s=900,
    )
    assert ok.word_order is WordOrder.ABCD and ok.register_map is DEFAULT_MAP
    with pytest.raises(UsageError, match="unknown channel"):
        device_from_row(
            "M2",
            host="h",
            port=502,
            unit=1,
            word_order="CDAB",
            register_map={"volts": {"address": 0}},
            interval_s=60,
        )


async def test_poller_keeps_one_loop_per_endpoint_and_drops_removed_ones() -> None:
    """The device list refresh regroups meters by endpoint (no database needed)."""
    current: dict[str, DeviceConfig] = {}

    async def load() -> LoadedDevices:
        return LoadedDevices(dict(current), {})

    def config(meter: str, port: int, unit: int) -> DeviceConfig:
        return DeviceConfig(meter, "127.0.0.1", port, unit, WordOrder.ABCD, DEFAULT_MAP, 900.0)

    class Sink:
        async def submit(self, work: Work) -> asyncio.Future[None]:
            raise AssertionError("nothing listens, nothing is read")

    poller = ModbusPoller(load=load, sink=Sink(), metrics=Metrics(), options=PollerOptions())
    current.update(
        {"A": config("A", 1502, 1), "B": config("B", 1502, 2), "C": config("C", 1503, 1)}
    )
    async with asyncio.TaskGroup() as group:
        await poller.refresh(group)
        assert {k: sorted(e.devices) for k, e in poller.endpoints.items()} == {
            ("127.0.0.1", 1502): ["A", "B"],
            ("127.0.0.1", 1503): ["C"],
        }
        del current["C"]
        await poller.refresh(group)
        assert list(poller.endpoints) == [("127.0.0.1", 1502)]
        for endpoint in poller.endpoints.values():
            endpoint.close()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not any(n.startswith("modbus-endpoint") for n in names)
