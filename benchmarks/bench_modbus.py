"""Modbus polling throughput: 500 simulated devices on loopback, polled by the gateway's poller.

Run:  .venv/bin/python -m benchmarks.bench_modbus [--servers 10] [--units 50] [--seconds 5]
                                                   [--map block|default] [--db] [--no-uvloop]

A child process serves ``servers × units`` devices (pymodbus ``ModbusTcpServer`` per port, one
unit id per device, the §9 electricity registers in ABCD order); the parent, on the other core,
measures in one run so that the figures can be read as ratios:

1. **bare, 1 connection**: a bare ``AsyncModbusTcpClient`` loop reading device after device on
   one connection (no decoding, no scheduling) — pymodbus's sequential request rate.
2. **bare, N connections**: the same loop on one connection per server, all concurrently —
   the ceiling for this client/server pair with the poller's parallelism.
3. **poller**: :class:`gateway.modbus.ModbusPoller` with every device due continuously
   (``interval_s=0``), decoding and validating each read and handing readings to a counting
   sink — the poller's read path.
4. **poller + database** (``--db``): the same through ``run_modbus_poller`` with the real
   ingest pipeline and ``write_batch`` into a fresh migrated database on the local PostgreSQL.

``--map block`` (default) registers the 18-register voltage/current/power block (9 channels):
one FC04 request per device poll, so device reads/s = requests/s. ``--map default`` polls the
full §9 map (5-7 requests per poll after the poller has learned which registers the device
lacks) and reports both polls/s and requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from multiprocessing.connection import Connection
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from gateway.dev.services import free_port
from gateway.ingest.work import Work
from gateway.metrics import Metrics
from gateway.modbus import DeviceConfig, LoadedDevices, ModbusPoller, PollerOptions
from protocols.modbus import DEFAULT_MAP, RegisterMap, WordOrder, encode_float32

ELECTRICITY = {
    0x0000: 230.0,
    0x0002: 231.5,
    0x0004: 229.25,
    0x0006: 5.25,
    0x0008: 4.5,
    0x000A: 0.75,
    0x000C: 1500.0,
    0x000E: -250.0,
    0x0010: 125.0,
    0x0034: 1375.0,
    0x0046: 50.0,
    0x0048: 12345.5,
    0x004A: 17.125,
    0x0104: 42.5,
    0x0200: 1.0,
}
BLOCK_MAP = RegisterMap(tuple(r for r in DEFAULT_MAP.registers if r.address < 0x12))


# --------------------------------------------------------------------------- server process


class _Image(ModbusServerContext):
    """Every unit 1..units answers the same register image (exception 2 outside it)."""

    def __init__(self, units: int, image: dict[int, int]) -> None:
        self.old_simulator = True
        self.simdevices: list[Any] = []
        self.units = set(range(1, units + 1))
        self.image = image
        self.requests = 0

    def device_ids(self) -> list[int]:
        return sorted(self.units)

    async def async_getValues(  # noqa: N802 - pymodbus API
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | ExcCodes:
        if device_id not in self.units:
            raise NoSuchIdException(str(device_id))
        self.requests += 1
        try:
            return [self.image[a] for a in range(address, address + count)]
        except KeyError:
            return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(  # noqa: N802 - pymodbus API
        self, device_id: int, func_code: int, address: int, values: Sequence[int]
    ) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_FUNCTION


async def _serve(ports: list[int], units: int, conn: Connection) -> None:
    image: dict[int, int] = {}
    for address, value in ELECTRICITY.items():
        image[address], image[address + 1] = encode_float32(value, WordOrder.ABCD)
    contexts = [_Image(units, image) for _ in ports]
    servers = []
    for port, context in zip(ports, contexts, strict=True):
        server = ModbusTcpServer(context, address=("127.0.0.1", port), ignore_missing_devices=True)
        await server.serve_forever(background=True)
        servers.append(server)
    conn.send("ready")
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_command() -> None:
        if conn.recv() == "count":
            conn.send(sum(c.requests for c in contexts))
        else:
            done.set()

    loop.add_reader(conn.fileno(), on_command)
    await done.wait()
    for server in servers:
        await server.shutdown()


def _server_main(ports: list[int], units: int, conn: Connection, uvloop_ok: bool) -> None:
    _run(_serve(ports, units, conn), uvloop_ok)


def _run(coro: Coroutine[Any, Any, Any], uvloop_ok: bool) -> Any:
    if uvloop_ok:
        try:
            import uvloop  # noqa: PLC0415
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


# --------------------------------------------------------------------------- measurements


async def bare_loop(ports: list[int], units: int, count: int, seconds: float) -> float:
    """Requests/s of bare pymodbus clients, one per port, each reading its units in turn."""
    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=p, retries=0, reconnect_delay=0) for p in ports
    ]
    for client in clients:
        assert await client.connect()
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(client: AsyncModbusTcpClient) -> None:
        nonlocal done
        unit = 0
        while time.perf_counter() < deadline:
            rr = await client.read_input_registers(0, count=count, device_id=unit % units + 1)
            assert not rr.isError()
            unit += 1
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in clients))
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return done / elapsed


class CountingSink:
    def __init__(self) -> None:
        self.works = 0
        self.readings = 0
        self.loop = asyncio.get_running_loop()

    async def submit(self, work: Work) -> asyncio.Future[None]:
        self.works += 1
        self.readings += len(work.readings)
        future: asyncio.Future[None] = self.loop.create_future()
        future.set_result(None)
        return future


def devices(ports: list[int], units: int, regmap: RegisterMap) -> dict[str, DeviceConfig]:
    out = {}
    for p, port in enumerate(ports):
        for unit in range(1, units + 1):
            meter = f"MB{p:02d}{unit:03d}"
            out[meter] = DeviceConfig(meter, "127.0.0.1", port, unit, WordOrder.ABCD, regmap, 900.0)
    return out


async def poller_run(
    configs: dict[str, DeviceConfig],
    seconds: float,
    concurrency: int,
    server_requests: Callable[[], int],
) -> tuple[float, float, float]:
    """(polls/s, requests/s, readings/s) of the poller over ``seconds`` after a warm-up."""
    sink = CountingSink()

    async def load() -> LoadedDevices:
        return LoadedDevices(configs, {})

    poller = ModbusPoller(
        load=load,
        sink=sink,
        metrics=Metrics(),
        options=PollerOptions(concurrency=concurrency, interval_s=0.0),
        rng=random.Random(1),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop, refresh_s=3600), name="bench-modbus-poller")
    await asyncio.sleep(1.0)  # connect, learn plans
    works, readings, requests = sink.works, sink.readings, server_requests()
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    works, readings = sink.works - works, sink.readings - readings
    requests = server_requests() - requests
    stop.set()
    await task
    return works / elapsed, requests / elapsed, readings / elapsed


async def poller_db_run(
    configs: dict[str, DeviceConfig], seconds: float, concurrency: int
) -> tuple[float, float]:
    """(polls/s, readings stored/s) through run_modbus_poller, the pipeline and PostgreSQL."""
    import psycopg  # noqa: PLC0415
    from psycopg.types.json import Jsonb  # noqa: PLC0415
    from psycopg_pool import AsyncConnectionPool  # noqa: PLC0415

    from gateway.db.migrate import apply_migrations  # noqa: PLC0415
    from gateway.dev.services import LOCAL_PG_ADMIN, create_database, with_database  # noqa: PLC0415
    from gateway.ingest.pipeline import IngestPipeline, PipelineLimits  # noqa: PLC0415
    from gateway.ingest.writer import STAGING_DDL, BatchResult, write_batch  # noqa: PLC0415
    from gateway.modbus import run_modbus_poller  # noqa: PLC0415

    name = f"bench_modbus_{uuid.uuid4().hex[:8]}"
    create_database(LOCAL_PG_ADMIN, name)
    url = with_database(LOCAL_PG_ADMIN, name)
    try:
        apply_migrations(url)
        with psycopg.connect(url) as conn:
            conn.cursor().executemany(
                "INSERT INTO meters (meter_id, transport, modbus_host, modbus_port, modbus_unit,"
                " modbus_word_order, register_map) VALUES (%s, 'modbus', %s, %s, %s, %s, %s)",
                [
                    (
                        c.meter_id,
                        c.host,
                        c.port,
                        c.unit,
                        c.word_order.value,
                        Jsonb(c.register_map.to_json()),
                    )
                    for c in configs.values()
                ],
            )

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(STAGING_DDL)
            await conn.commit()

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=2, max_size=4, configure=configure, open=False
        )
        await pool.open(wait=True)
        metrics = Metrics()

        async def write(batch: Sequence[Work]) -> BatchResult:
            async with pool.connection() as conn:
                return await write_batch(conn, batch)

        pipeline = IngestPipeline(write, PipelineLimits(), metrics)
        flush = asyncio.create_task(pipeline.run(), name="bench-flush")
        stop = asyncio.Event()
        poll_task = asyncio.create_task(
            run_modbus_poller(
                pool=pool,
                pipeline=pipeline,
                metrics=metrics,
                stop=stop,
                refresh_s=3600,
                concurrency=concurrency,
                interval_s=0.0,
            ),
            name="bench-modbus-poller",
        )
        ok = metrics.modbus_polls.labels(result="ok")
        await asyncio.sleep(1.0)
        polls0, stored0 = ok._value.get(), metrics.readings_stored._value.get()
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        polls = ok._value.get() - polls0
        stored = metrics.readings_stored._value.get() - stored0
        stop.set()
        await poll_task
        await pipeline.close()
        await flush
        await pool.close()
        return polls / elapsed, stored / elapsed
    finally:
        with psycopg.connect(LOCAL_PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def measure(args: argparse.Namespace, ports: list[int], control: Connection) -> None:
    regmap = BLOCK_MAP if args.map == "block" else DEFAULT_MAP
    configs = devices(ports, args.units, regmap)
    block = max(r.address for r in regmap.registers) + 2 if args.map == "block" else 18

    def server_requests() -> int:
        control.send("count")
        count: int = control.recv()
        return count

    print(
        f"{len(configs)} devices on {len(ports)} ports, map={args.map}, {args.seconds:.0f} s each"
    )
    one = await bare_loop(ports[:1], args.units, block, args.seconds)
    print(f"  bare pymodbus, 1 connection       : {one:8.0f} requests/s")
    many = await bare_loop(ports, args.units, block, args.seconds)
    print(f"  bare pymodbus, {len(ports)} connections     : {many:8.0f} requests/s")
    polls, requests, readings = await poller_run(
        configs, args.seconds, args.concurrency, server_requests
    )
    print(
        f"  poller (read path)                : {polls:8.0f} device polls/s,"
        f" {requests:.0f} requests/s, {readings:.0f} readings/s"
    )
    print(
        f"  ratio poller/bare-1-conn = {requests / one:.2f},"
        f" poller/bare-{len(ports)}-conn = {requests / many:.2f} (requests/s)"
    )
    if args.db:
        db_polls, stored = await poller_db_run(configs, args.seconds, args.concurrency)
        print(
            f"  poller + pipeline + PostgreSQL    : {db_polls:8.0f} device polls/s,"
            f" {stored:.0f} readings stored/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=10)
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--map", choices=("block", "default"), default="block")
    parser.add_argument("--db", action="store_true", help="also measure into PostgreSQL")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    ports = [free_port() for _ in range(args.servers)]
    parent, child = mp.Pipe()
    server = mp.get_context("spawn").Process(
        target=_server_main, args=(ports, args.units, child, not args.no_uvloop), daemon=True
    )
    server.start()
    try:
        if not parent.poll(30) or parent.recv() != "ready":
            raise SystemExit("Modbus servers did not start")
        _run(measure(args, ports, parent), not args.no_uvloop)
    finally:
        parent.send("stop")
        server.join(10)


if __name__ == "__main__":
    main()
