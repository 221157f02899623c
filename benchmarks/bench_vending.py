"""Vending throughput and latency through HTTP, beside the database's own ceiling.

Run:  .venv/bin/python -m benchmarks.bench_vending [--seconds 10] [--rate 500] [--connections 32]

Everything runs in one go on one machine, so the figures read as ratios:

1. **ceiling**: the sale transaction alone — ``VendingService.credit`` (idempotency record,
   meter and float locks, tariff and month-to-date, TIDs, token encryption, ledger, stored
   response, commit) called from ``--connections`` concurrent tasks, no HTTP.
2. **saturated**: ``wrk`` (a C HTTP load generator) with ``--connections`` keep-alive
   connections sending credit vends (a fresh ``request_id`` each) to the vending API served by
   uvicorn in its own process: sales/s and latency percentiles.
3. **paced**: the same at about ``--rate`` requests/s (each connection pauses between
   requests), the latency a till sees at that load: p50 / p95 / p99.

Meters, vendors (each with its own float) and tariffs are created in a fresh database first.
The server authenticates the bearer value as the vendor's name (access control is not part of
this measurement). ``wrk`` is installed with apt-get when missing and running as root.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool

from gateway.auth import store as access
from gateway.db.migrate import apply_migrations
from gateway.dev.services import LOCAL_PG_ADMIN, create_database, free_port, with_database
from gateway.http.security import Principal, Role
from gateway.http.vending import require_vendor
from gateway.http.vending_admin import install_vending
from gateway.settings import TimescaleMode
from gateway.vending import tariffs, vendors
from gateway.vending.keys import KeyStoreDecoderKeys
from gateway.vending.service import VendingService
from tokens.keys import VendingKey
from tokens.meter_number import luhn_check_digit

SGC = "123456"
DEV_KEY = VendingKey.from_hex("02", "abababababababab")  # the simulated fleet's development key
TARIFF = {
    "utility": "electricity",
    "customer_class": "domestic",
    "effective_from": "2020-01-01",
    "blocks": [
        {"from": "0", "to": "100", "rate": "2.00"},
        {"from": "100", "to": "400", "rate": "2.50"},
        {"from": "400", "to": "650", "rate": "3.00"},
        {"from": "650", "to": None, "rate": "3.50"},
    ],
}


class DevKeys:
    async def vending_key(
        self, *, conn: psycopg.AsyncConnection[Any], sgc: str, krn: int, dkga: str
    ) -> VendingKey | None:
        del conn
        return DEV_KEY if (sgc, krn, dkga) == (SGC, 1, "02") else None


def meter_ids(count: int) -> list[str]:
    serials = (f"9{n:09d}" for n in range(count))
    return [serial + str(luhn_check_digit(serial)) for serial in serials]


async def prepare(database_url: str, meters: list[str], vendor_count: int) -> None:
    async with (
        AsyncConnectionPool(database_url, min_size=1, max_size=2) as pool,
        pool.connection() as conn,
    ):
        await tariffs.store_tariffs(conn, tariffs.tariffs_from_data({"tariffs": [TARIFF]}))
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO meters (meter_id, utility, payment, verified)"
                " VALUES (%s, 'electricity', 'prepaid', true)",
                [(m,) for m in meters],
            )
            await cur.executemany(
                "INSERT INTO meter_vending (meter_id, sgc, krn, ti, key_type, base_date, ea,"
                " dkga) VALUES (%s, %s, 1, 1, 2, 2014, '07', '02')",
                [(m, SGC) for m in meters],
            )
        for n in range(vendor_count):
            await access.create_principal(conn, name=f"v{n}", role=Role.VENDOR, kind="machine")
            await vendors.top_up(conn, f"v{n}", Decimal("100000000.00"), actor="bench")


# -- the server process -------------------------------------------------------------------


def bench_app(service: VendingService) -> FastAPI:
    app = FastAPI()
    install_vending(app, service)

    def vendor(request: Request) -> Principal:
        name = request.headers.get("authorization", "Bearer v0").removeprefix("Bearer ")
        return Principal(1, name, Role.VENDOR, "machine")

    app.dependency_overrides[require_vendor] = vendor
    return app


async def serve(database_url: str, port: int, pool_size: int) -> None:
    async with AsyncConnectionPool(database_url, min_size=pool_size, max_size=pool_size) as pool:
        app = bench_app(VendingService(pool, KeyStoreDecoderKeys(DevKeys())))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        await uvicorn.Server(config).serve()


# -- the measurements ---------------------------------------------------------------------


async def ceiling(
    database_url: str, meters: list[str], vendor_count: int, tasks: int, seconds: float
) -> dict[str, float]:
    """Sales/s of the service's own transaction, without HTTP."""
    async with AsyncConnectionPool(database_url, min_size=tasks, max_size=tasks) as pool:
        service = VendingService(pool, KeyStoreDecoderKeys(DevKeys()))
        counter = itertools.count()
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            while time.perf_counter() < deadline:
                n = next(counter)
                started = time.perf_counter()
                await service.credit(
                    f"v{n % vendor_count}",
                    f"c-{index}-{n}",
                    meters[n % len(meters)],
                    Decimal("20.00"),
                )
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(tasks)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "sales_per_s": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


LUA = """
local meters = {%(meters)s}
local vendors = %(vendors)d
local pause = %(pause)d
local counter = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  prefix = "w" .. tid .. "-" .. math.random(1, 1000000000)
end
function request()
  counter = counter + 1
  local meter = meters[(counter * 7 + tid) %% #meters + 1]
  local body = string.format(
    '{"request_id":"%%s-%%d","meter":"%%s","amount":"20.00"}', prefix, counter, meter)
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer v" .. ((counter + tid) %% vendors)
  return wrk.format("POST", "/vend/v1/credit", headers, body)
end
if pause > 0 then
  function delay() return pause end
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return found


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    result = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    requests, duration_us, p50, p95, p99, bad_status, socket_errors = map(int, line.split()[1:])
    return {
        "requests_per_s": requests / (duration_us / 1e6),
        "p50_ms": p50 / 1000,
        "p95_ms": p95 / 1000,
        "p99_ms": p99 / 1000,
        "non_200": bad_status,
        "socket_errors": socket_errors,
    }


def write_script(
    directory: Path, name: str, meters: list[str], vendor_count: int, pause_ms: int
) -> Path:
    path = directory / name
    path.write_text(
        LUA
        % {
            "meters": ",".join(f'"{m}"' for m in meters),
            "vendors": vendor_count,
            "pause": pause_ms,
        }
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--vendors", type=int, default=8)
    parser.add_argument(
        "--serve", nargs=2, metavar=("DATABASE_URL", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], int(args.serve[1]), 8))
        return
    wrk = ensure_wrk()
    name = f"gw_bench_vend_{uuid.uuid4().hex[:8]}"
    create_database(LOCAL_PG_ADMIN, name)
    url = with_database(LOCAL_PG_ADMIN, name)
    apply_migrations(url, timescale=TimescaleMode.OFF)
    meters = meter_ids(args.meters)
    asyncio.run(prepare(url, meters, args.vendors))
    results: dict[str, Any] = {}
    results["ceiling"] = asyncio.run(
        ceiling(url, meters, args.vendors, min(args.connections, 16), args.seconds)
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_vending", "--serve", url, str(port)]
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/vend/v1/float", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            flat_out = write_script(directory, "saturate.lua", meters, args.vendors, 0)
            results["saturated"] = run_wrk(
                wrk, f"http://127.0.0.1:{port}", flat_out, args.connections, args.seconds
            )
            # each connection pauses so the connections together offer about --rate requests/s
            paced_connections = max(2, args.rate // 10)
            pause_ms = max(1, 1000 * paced_connections // args.rate)
            paced = write_script(directory, "paced.lua", meters, args.vendors, pause_ms)
            results["paced"] = run_wrk(
                wrk, f"http://127.0.0.1:{port}", paced, paced_connections, args.seconds
            )
    finally:
        server.terminate()
        server.wait(30)
        with psycopg.connect(LOCAL_PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    results["http_vs_ceiling"] = (
        results["saturated"]["requests_per_s"] / results["ceiling"]["sales_per_s"]
    )
    print(json.dumps(results, indent=2, default=lambda v: round(v, 3)))


if __name__ == "__main__":
    main()
