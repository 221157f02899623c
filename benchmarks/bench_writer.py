"""Storage ceiling: the batch writer against the plain COPY + ``ON CONFLICT DO NOTHING`` upsert.

Run:  .venv/bin/python -m benchmarks.bench_writer [--rows N] [--batch B] [--admin-url URL]

All figures come from one run on fresh databases, so they read as ratios:

1. **baseline**: the previous writer's readings path: COPY into the staging table,
   ``INSERT … SELECT … ON CONFLICT DO NOTHING`` (which silently kept the first value) and the
   meter last-seen update, B rows a transaction;
2. **writer, new rows** (``new``): ``gateway.ingest.writer.write_batch`` on the same rows
   (quality rule, conflict recording) — the steady state;
3. **writer, redelivery** (``again``): the same batches written again (every reading a
   duplicate, so the conflict classification runs) — the worst case after a reconnect.

Each is reported as rows per wall-clock second and as rows per CPU-second of the PostgreSQL
backend (read from /proc when the server runs on this machine): on a shared machine the second
is the steadier measure of what the database itself spends. ``--admin-url`` points at another
server (e.g. one with TimescaleDB preloaded, where the migrations create the hypertable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from gateway.db.migrate import apply_migrations
from gateway.dev.services import LOCAL_PG_ADMIN, create_database, with_database
from gateway.ingest.work import Work
from gateway.ingest.writer import _TOUCH_FROM_STAGE, STAGING_DDL, write_batch
from gateway.settings import TimescaleMode
from protocols import Reading

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_BASELINE_UPSERT = (
    "INSERT INTO reading_data (meter_id, channel, ts, value, raw_ts, quality)"
    " SELECT meter_id, channel, ts, value, raw_ts, quality FROM ingest_stage"
    " ON CONFLICT DO NOTHING"
)


def batches(total: int, size: int, meters: int) -> list[list[Work]]:
    """Messages of 96 readings (a day of 15-minute intervals), cut into batches of ``size``."""
    works: list[Work] = []
    for n in range(total // 96):
        meter = f"B{n % meters:05d}"
        base = (n // meters) * 96
        readings = [
            Reading(
                meter, T0 + timedelta(minutes=15 * (base + i)), "1.8.0", float(i), None, "measured"
            )
            for i in range(96)
        ]
        works.append(Work(topic=f"meters/{meter}/telemetry", payload=b"", readings=readings))
    per = max(1, size // 96)
    return [works[i : i + per] for i in range(0, len(works), per)]


def _backend_cpu_s(pid: int) -> float | None:
    """CPU seconds used so far by a local PostgreSQL backend, or None when it is not local."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _baseline_batch(
    conn: psycopg.AsyncConnection[tuple[object, ...]], batch: list[Work]
) -> int:
    rows = 0
    async with conn.transaction():
        cur = conn.cursor()
        async with cur.copy(
            "COPY ingest_stage (meter_id, ts, channel, value, raw_ts, quality)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(("text", "timestamptz", "text", "float8", "text", "text"))
            for work in batch:
                for reading in work.readings:
                    await copy.write_row(reading)
                rows += len(work.readings)
        await cur.execute(_BASELINE_UPSERT)
        await cur.execute(_TOUCH_FROM_STAGE)
    return rows


async def _writer_batch(
    conn: psycopg.AsyncConnection[tuple[object, ...]], batch: list[Work]
) -> int:
    return (await write_batch(conn, batch)).readings_staged


async def measure(
    url: str, cut: list[list[Work]], *, baseline: bool, repeat: int = 1
) -> list[tuple[float, float | None]]:
    """(rows per wall second, rows per backend CPU second) for each of ``repeat`` passes."""
    step = _baseline_batch if baseline else _writer_batch
    figures = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(STAGING_DDL)
        await conn.commit()
        pid = conn.info.backend_pid
        for _ in range(repeat):
            rows = 0
            cpu0, start = _backend_cpu_s(pid), time.perf_counter()
            for batch in cut:
                rows += await step(conn, batch)
            wall, cpu1 = time.perf_counter() - start, _backend_cpu_s(pid)
            per_cpu = (
                rows / (cpu1 - cpu0)
                if cpu0 is not None and cpu1 is not None and cpu1 > cpu0
                else None
            )
            figures.append((rows / wall, per_cpu))
    return figures


def fresh_database(admin: str) -> str:
    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    create_database(admin, name)
    url = with_database(admin, name)
    apply_migrations(url, timescale=TimescaleMode(os.environ.get("GATEWAY_TIMESCALEDB", "auto")))
    return url


def drop_database(admin: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=480_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--admin-url", default=LOCAL_PG_ADMIN)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cut = batches(args.rows, args.batch, args.meters)
    results: dict[str, float] = {}
    runs: dict[str, list[tuple[float, float | None]]] = {"baseline": [], "new": [], "again": []}
    for _ in range(args.rounds):  # alternate, so that load from elsewhere hits both alike
        for baseline in (True, False):
            url = fresh_database(args.admin_url)
            try:
                figures = await measure(url, cut, baseline=baseline, repeat=1 if baseline else 2)
            finally:
                drop_database(args.admin_url, url)
            if baseline:
                runs["baseline"] += figures
            else:
                runs["new"].append(figures[0])
                runs["again"].append(figures[1])
    for name, figures in runs.items():
        results[f"{name}_rows_per_s"] = statistics.median(f[0] for f in figures)
        cpu = [f[1] for f in figures if f[1] is not None]
        if cpu:
            results[f"{name}_rows_per_backend_cpu_s"] = statistics.median(cpu)
    for name in ("new", "again"):
        for unit in ("rows_per_s", "rows_per_backend_cpu_s"):
            if f"{name}_{unit}" in results and f"baseline_{unit}" in results:
                results[f"{name}_vs_baseline_{unit}"] = (
                    results[f"{name}_{unit}"] / results[f"baseline_{unit}"]
                )
    print(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
