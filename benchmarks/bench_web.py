"""Meter card server time at fleet scale, beside the same queries run directly through psycopg.

Run:  .venv/bin/python -m benchmarks.bench_web [--meters 1000] [--days 365] [--requests 200]
          [--admin-url URL] [--keep | --database URL]

Builds a database of its own holding ``--days`` of **15-minute** readings for N electricity
meters (import register 1.8.0 and voltage L1 32.7.0: 2 x 96 rows a meter a day; the default
1 000 meters x 365 days is 70 million rows), written in time order, a day of the whole fleet
at a time, the way ingest writes them (so one meter's rows are spread over the table, not
packed together). On a server that preloads TimescaleDB the schema is the TimescaleDB one:
chunks older than 7 days are then compressed and the continuous aggregates refreshed over
the whole year, as the policies would have done while the data arrived. ``--keep`` keeps the
database (its URL is printed) and ``--database URL`` times an existing one instead of
building: the build takes long.

Then it runs the real gateway on it (HTTP on loopback, the machine's broker) and times, in
the same run, R requests spread over the meters for:

1. **psycopg** (the baseline): the card's own queries, run directly on one connection through
   the functions the page calls (meter, latest value per channel, open alerts, events,
   tokens, account, and the two chart queries of the range: import and voltage L1);
2. **charts via views** / **via the window**: the two chart queries alone, through
   ``readings_hourly`` / ``readings_daily`` and aggregating the window of ``reading_data``
   (the card runs the window on plain PostgreSQL, where it ran the views before, and the
   views on TimescaleDB; see ``gateway/web/queries.py``);
3. **card JSON**: ``GET /meters/{id}/card``;
4. **card page**: ``GET /field/meters/{id}?range=24h|7d|30d`` (the HTML with its two charts).

It prints p50 / p95 in milliseconds and each p50 as a ratio to the psycopg p50 of the same
range. The machine is shared: compare ratios within one run, not milliseconds across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import psycopg
from psycopg.rows import dict_row

from gateway.auth import store
from gateway.auth.model import Role
from gateway.db.migrate import apply_migrations
from gateway.dev.services import LOCAL_PG_ADMIN, create_database, with_database
from gateway.service import GatewayHandle, run_gateway
from gateway.settings import Settings
from gateway.web import api, queries

RANGES: Final = {"24h": ("hour", 1), "7d": ("hour", 7), "30d": ("day", 30)}
CHANNELS: Final = ("1.8.0", "32.7.0")


def meter_id(i: int) -> str:
    return f"E{i:05d}"


def build(admin_url: str, meters: int, days: int) -> str:
    name = f"gw_bench_web_{uuid.uuid4().hex[:8]}"
    create_database(admin_url, name)
    url = with_database(admin_url, name)
    timescale = apply_migrations(url).timescale
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meters (meter_id, utility, payment, verified, last_seen, area, address)"
            " SELECT 'E' || lpad(i::text, 5, '0'), 'electricity', 'prepaid', true,"
            " now() - interval '10 minutes', 'Area ' || (i %% 7), i || ' Main Road'"
            " FROM generate_series(1, %s) i",
            (meters,),
        )
        started = time.perf_counter()
        for day in range(days + 1):
            since = start + timedelta(days=day)
            # Each meter uses 0.2-0.65 kW on average; voltage wanders around 230 V.
            conn.execute(
                "INSERT INTO reading_data (meter_id, channel, ts, value)"
                " SELECT 'E' || lpad(i::text, 5, '0'), ch, ts, CASE WHEN ch = '1.8.0'"
                "   THEN extract(epoch FROM ts - %(start)s) / 3600 * (0.2 + (i %% 10) * 0.05)"
                "   ELSE 230 + 5 * sin(extract(epoch FROM ts) / 3600 + i) END"
                " FROM generate_series(%(since)s, least(%(until)s, %(end)s), '15 minutes') ts"
                " CROSS JOIN generate_series(1, %(meters)s) i"
                " CROSS JOIN unnest(%(channels)s::text[]) ch"
                " ORDER BY ts, i, ch",
                {
                    "start": start,
                    "since": since,
                    "until": since + timedelta(days=1) - timedelta(minutes=15),
                    "end": end,
                    "meters": meters,
                    "channels": list(CHANNELS),
                },
            )
            if day % 30 == 0:
                print(f"  day {day}/{days}, {time.perf_counter() - started:.0f} s", flush=True)
        # What ingest keeps for each meter.
        conn.execute("UPDATE meters SET last_reading_ts = %s", (end,))
        if timescale:
            conn.execute(
                "SELECT count(compress_chunk(c, if_not_compressed => true))"
                " FROM show_chunks('reading_data', older_than => interval '7 days') c"
            )
            for view, lag in (("readings_hourly", "1 hour"), ("readings_daily", "1 day")):
                conn.execute(
                    "CALL refresh_continuous_aggregate(%s::regclass, NULL, now() - %s::interval)",
                    (view, lag),
                )
        conn.execute("VACUUM ANALYZE")
    return url


def pcts(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=20)
    return statistics.median(values), q[18]


async def timed(calls: list[Callable[[], Awaitable[object]]]) -> list[float]:
    await calls[0]()  # warm-up
    times = []
    for call in calls:
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def card_queries(
    conn: psycopg.AsyncConnection[Any], meter: str, range_key: str, *, timescale: bool
) -> None:
    """What ``GET /field/meters/{id}?range=…`` asks the database, without HTTP or HTML."""
    card = await api.build_card(conn, meter, with_commands=True, timescale=timescale)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT customer_class FROM accounts WHERE account_id = %s", (card["meter"]["account"],)
        )
        await cur.fetchall()
    interval, days = RANGES[range_key]
    until = datetime.now(UTC)
    for channel in CHANNELS:
        await api.readings_of(
            conn,
            meter,
            channel=channel,
            interval=interval,  # type: ignore[arg-type]
            since=until - timedelta(days=days),
            until=until,
            timescale=timescale,
        )


async def charts(
    conn: psycopg.AsyncConnection[Any], meter: str, range_key: str, *, sql: dict[str, str]
) -> None:
    interval, days = RANGES[range_key]
    until = datetime.now(UTC)
    for channel in CHANNELS:
        cur = await conn.execute(
            sql[interval],
            {"m": meter, "c": channel, "since": until - timedelta(days=days), "until": until},
        )
        await cur.fetchall()


async def run(url: str, meters: int, requests: int) -> list[tuple[str, list[float], float]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        await store.create_principal(conn, name=name, role=Role.TECHNICIAN, kind="machine")
        _, key = await store.add_api_key(conn, name)
        await conn.commit()
    settings = Settings(
        database_url=url,
        http_port=0,
        mqtt_topic_prefix=f"bench-{uuid.uuid4().hex[:8]}/",
        mqtt_client_id=f"gw-bench-{uuid.uuid4().hex[:8]}",
        detection_enabled=False,
        rate_limit_staff_per_min=0,
        log_level="WARNING",
    )
    stop = asyncio.Event()
    started: asyncio.Future[GatewayHandle] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_gateway(settings, stop, started=started))
    handle = await asyncio.wait_for(started, 60)
    rows: list[tuple[str, list[float], float]] = []
    try:
        rng = random.Random(7)
        ids = [meter_id(rng.randint(1, meters)) for _ in range(requests)]
        base = f"http://127.0.0.1:{handle.http_port}"
        auth = {"Authorization": f"Bearer {key}"}
        async with (
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
            httpx.AsyncClient(base_url=base, headers=auth, timeout=120) as http,
        ):

            def get(path: str) -> Callable[[], Awaitable[object]]:
                async def call() -> None:
                    response = await http.get(path)
                    assert response.status_code == 200, (path, response.text[:200])

                return call

            def direct(
                fn: Callable[[psycopg.AsyncConnection[Any], str, str], Awaitable[None]],
                m: str,
                r: str,
            ) -> Callable[[], Awaitable[object]]:
                return lambda: fn(conn, m, r)

            timescale = await queries.SchemaVariant().timescale(conn)
            card = functools.partial(card_queries, timescale=timescale)
            json_times = await timed([get(f"/meters/{m}/card") for m in ids])
            for range_key in RANGES:
                baseline = await timed([direct(card, m, range_key) for m in ids])
                base_p50 = pcts(baseline)[0]
                rows.append((f"psycopg: card queries, {range_key}", baseline, base_p50))
                for label, sql in (("views", queries.VIEW_SQL), ("the window", queries.WINDOW_SQL)):
                    form = functools.partial(charts, sql=sql)
                    alone = await timed([direct(form, m, range_key) for m in ids])
                    rows.append((f"psycopg: charts via {label}, {range_key}", alone, base_p50))
                if range_key == "24h":
                    rows.append(("GET /meters/{id}/card", json_times, base_p50))
                page = await timed([get(f"/field/meters/{m}?range={range_key}") for m in ids])
                rows.append((f"GET /field/meters/{{id}}?range={range_key}", page, base_p50))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--admin-url", default=LOCAL_PG_ADMIN)
    parser.add_argument("--keep", action="store_true", help="keep the database built")
    parser.add_argument("--database", help="time this database (built with --keep) instead")
    args = parser.parse_args()
    url = args.database
    if url is None:
        started = time.perf_counter()
        url = build(args.admin_url, args.meters, args.days)
        print(f"built in {time.perf_counter() - started:.0f} s: {url}", flush=True)
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*), (SELECT variant FROM schema_migrations LIMIT 1) FROM meters"
            ).fetchone()
        assert row is not None
        meters, variant = int(row[0]), row[1]
        rows = asyncio.run(run(url, meters, args.requests))
    finally:
        if args.database is None and not args.keep:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    print(
        f"{meters} meters, 15-minute data (2 channels), {variant} schema,"
        f" {args.requests} requests each, sequential"
    )
    print(f"{'':<40}{'p50 ms':>9}{'p95 ms':>9}{'p50 / psycopg':>15}")
    for label, values, base_p50 in rows:
        p50, p95 = pcts(values)
        print(f"{label:<40}{p50:>9.1f}{p95:>9.1f}{p50 / base_p50:>14.1f}x")


if __name__ == "__main__":
    main()
