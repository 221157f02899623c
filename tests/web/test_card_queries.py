"""The meter card's queries on both schema variants.

The chart query of plain PostgreSQL aggregates the requested window of ``reading_data`` itself;
its buckets must be exactly those of ``readings_hourly`` / ``readings_daily`` (UTC hours, days
of the deployment zone) on both variants, for aligned and unaligned windows, across a DST
change, and with the views half materialised on TimescaleDB. The latest values are those of
the channels that reported in the week up to the meter's last reading, whichever variant,
compressed chunks included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.db.migrate import apply_migrations
from gateway.web import queries
from tests.gateway.test_timescale import refresh
from tests.plugins.services import TIMESCALE, DbServer

both_variants = pytest.mark.both_variants

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


@both_variants
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
    columns = ("bucket", "min_value", "max_value", "avg_value", "first_value", "last_value")
    async with await psycopg.AsyncConnection.connect(empty_database_url) as conn:
        await conn.execute("SET TIME ZONE 'Asia/Kolkata'")
        for interval in ("hour", "day"):
            for since, until in WINDOWS:
                expected = await view_buckets(conn, interval, since, until)
                params = {"m": "M1", "c": "1.8.0", "since": since, "until": until}
                window = await (await conn.execute(queries.WINDOW_SQL[interval], params)).fetchall()
                assert window == expected, (interval, since, until)
                # What the card runs on this variant.
                card = await queries.buckets(
                    conn,
                    "M1",
                    channel="1.8.0",
                    interval=interval,
                    since=since,
                    until=until,
                    timescale=db_server.variant == TIMESCALE,
                )
                assert [(*(b[c] for c in columns), b["samples"]) for b in card] == expected
                compared += len(expected)
    # 72 hours + a partial hour's worth of windows, and the days of three windows at least.
    assert compared > 150


@both_variants
async def test_latest_values_are_those_of_the_channels_of_the_last_week(
    database_url: str, db_server: DbServer
) -> None:
    last = datetime(2026, 11, 30, 12, tzinfo=UTC)
    rows = [
        # channel, ts, value: every 6 h for 20 days up to the last reading.
        *(("1.8.0", last - k * 6 * H, 500.0 - k) for k in range(80)),
        ("32.7.0", last - 6 * D, 229.5),  # inside the week
        ("32.7.0", last - 9 * D, 231.0),
        ("52.7.0", last - 8 * D, 228.0),  # silent for more than a week before the last reading
        ("72.7.0", last + 2 * H, 230.5),  # after the recorded last reading (a backfill)
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        with conn.cursor().copy(
            "COPY reading_data (meter_id, channel, ts, value) FROM STDIN"
        ) as cp:
            for channel, ts, value in rows:
                cp.write_row(("M1", channel, ts, value))
                cp.write_row(("M2", channel, ts, -value))
        if db_server.variant == TIMESCALE:
            compressed = conn.execute(
                "SELECT count(compress_chunk(c)) FROM show_chunks('reading_data',"
                " older_than => %s::timestamptz) c",
                (last - 3 * D,),
            ).fetchone()
            assert compressed is not None and compressed[0] > 10
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        timescale = db_server.variant == TIMESCALE
        week = await queries.latest_per_channel(conn, "M1", last_reading=last, timescale=timescale)
        every = await queries.latest_per_channel(conn, "M1", last_reading=None, timescale=timescale)
    assert [(r["channel"], r["ts"], r["value"]) for r in week] == [
        ("1.8.0", last, 500.0),
        ("32.7.0", last - 6 * D, 229.5),
        ("72.7.0", last + 2 * H, 230.5),
    ]
    assert [(r["channel"], r["ts"], r["value"]) for r in every] == [
        ("1.8.0", last, 500.0),
        ("32.7.0", last - 6 * D, 229.5),
        ("52.7.0", last - 8 * D, 228.0),
        ("72.7.0", last + 2 * H, 230.5),
    ]
