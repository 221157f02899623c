"""The meter card's chart query aggregates the requested window of ``reading_data`` itself; its
buckets must be exactly those of ``readings_hourly`` / ``readings_daily`` (UTC hours, days of
the deployment zone), on both schema variants, for aligned and unaligned windows, across a DST
change, and with the views half materialised on TimescaleDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.db.migrate import apply_migrations
from gateway.web import queries
from tests.gateway.test_timescale import refresh
from tests.plugins.services import TIMESCALE, DbServer

# 20-minute readings for three days around the end of DST in Europe (25 October 2026, a 25 h
# day in Berlin); integer values keep averages exact whatever the summation order.
START = datetime(2026, 10, 23, 21, 10, tzinfo=UTC)
ROWS = [(START + timedelta(minutes=20 * i), float(i % 23)) for i in range(3 * 72)]
H = timedelta(hours=1)
D = timedelta(days=1)
WINDOWS = [
    (START, START + 3 * D),
    (START - D, START + 4 * D),
    (datetime(2026, 10, 24, 10, 30, tzinfo=UTC), datetime(2026, 10, 24, 13, 10, tzinfo=UTC)),
    (datetime(2026, 10, 24, 10, tzinfo=UTC), datetime(2026, 10, 24, 13, tzinfo=UTC)),
    (datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 26, 0, 30, tzinfo=UTC)),
    (datetime(2026, 10, 25, 12, tzinfo=UTC), datetime(2026, 10, 25, 12, 40, tzinfo=UTC)),
    (START - 3 * D, START - D),
]
VIEWS = {"hour": "readings_hourly", "day": "readings_daily"}


async def view_buckets(
    conn: psycopg.AsyncConnection[Any], interval: str, since: datetime, until: datetime
) -> list[tuple[Any, ...]]:
    cur = await conn.execute(
        "SELECT bucket, min_value, max_value, avg_value, first_value, last_value, samples"  # type: ignore[arg-type]
        f" FROM {VIEWS[interval]} WHERE meter_id = 'M1' AND channel = '1.8.0'"
        " AND bucket >= %s AND bucket < %s ORDER BY bucket",
        (since, until),
    )
    return await cur.fetchall()


@pytest.mark.both_variants
@pytest.mark.parametrize("zone", ["Africa/Johannesburg", "Europe/Berlin"])
async def test_chart_buckets_are_the_views_buckets(
    empty_database_url: str, db_server: DbServer, zone: str
) -> None:
    apply_migrations(empty_database_url, timescale=db_server.mode, time_zone=zone)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'Asia/Kolkata'")  # the session's zone must change nothing
        copy = "COPY reading_data (meter_id, channel, ts, value) FROM STDIN"
        with conn.cursor().copy(copy) as cp:
            for ts, value in ROWS:
                cp.write_row(("M1", "1.8.0", ts, value))
                cp.write_row(("M1", "32.7.0", ts, 230.0))
                cp.write_row(("M2", "1.8.0", ts, 1000.0 + value))
        if db_server.variant == TIMESCALE:
            # Materialise the first day only: the rest comes from the raw rows.
            refresh(conn, "readings_hourly", START + D)
            refresh(conn, "readings_daily", START + D)
    compared = 0
    async with await psycopg.AsyncConnection.connect(empty_database_url) as conn:
        await conn.execute("SET TIME ZONE 'Asia/Kolkata'")
        for interval in ("hour", "day"):
            for since, until in WINDOWS:
                ours = await queries.buckets(
                    conn, "M1", channel="1.8.0", interval=interval, since=since, until=until
                )
                expected = await view_buckets(conn, interval, since, until)
                got = [
                    (
                        b["bucket"],
                        b["min_value"],
                        b["max_value"],
                        b["avg_value"],
                        b["first_value"],
                        b["last_value"],
                        b["samples"],
                    )
                    for b in ours
                ]
                assert got == expected, (interval, since, until)
                compared += len(expected)
    # 72 hours + a partial hour's worth of windows, and the days of three windows at least.
    assert compared > 150
