"""TimescaleDB for real: compression, retention, continuous aggregates, and the two variants'
buckets agreeing with each other and with an independent computation.

The policies' jobs are run explicitly (``CALL run_job``): test databases are clones, which get no
background scheduler, so nothing happens behind a test's back.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import groupby
from zoneinfo import ZoneInfo

import psycopg
import pytest

from gateway.db.migrate import apply_migrations
from gateway.dev.services import BackingServices, create_database, with_database
from gateway.ingest.work import Work
from gateway.ingest.writer import STAGING_DDL, write_batch
from gateway.settings import TimescaleMode
from protocols.telemetry import Reading
from tests.plugins.services import PLAIN, TIMESCALE, DbServer, drop_database

on_timescale = pytest.mark.parametrize("db_variant", ["timescale"], indirect=True)


def job_id(conn: psycopg.Connection[tuple[object, ...]], proc: str, table: str) -> int:
    row = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_name = %s",
        (proc, table),
    ).fetchone()
    assert row is not None, f"no {proc} job on {table}"
    return int(str(row[0]))


def chunks(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[datetime, bool]]:
    return [
        (start, bool(compressed))
        for start, compressed in conn.execute(
            "SELECT range_start, is_compressed FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'reading_data' ORDER BY range_start"
        ).fetchall()
    ]


async def write(url: str, readings: list[Reading]) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(STAGING_DDL)
        await conn.commit()
        result = await write_batch(conn, [Work("t", b"", readings=readings)])
    return result.readings_staged, result.readings_stored


@on_timescale
async def test_on_conflict_into_a_compressed_chunk_stores_new_rows_once(
    database_url: str,
) -> None:
    day = (datetime.now(UTC) - timedelta(days=30)).replace(hour=0, minute=0, second=0,
                                                           microsecond=0)  # fmt: skip
    old = [Reading("M1", day + timedelta(minutes=15 * i), "1.8.0", float(i), None, "measured")
           for i in range(48)]  # fmt: skip
    assert await write(database_url, old) == (48, 48)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CALL run_job(%s)", (job_id(conn, "policy_compression", "reading_data"),))
        assert chunks(conn) and all(compressed for _, compressed in chunks(conn))
    # A redelivery of stored readings plus new ones that land in the compressed chunk.
    late = [Reading("M1", day + timedelta(minutes=15 * i), "1.8.0", float(i), None, "measured")
            for i in range(40, 56)]  # fmt: skip
    assert await write(database_url, late) == (16, 8)
    assert await write(database_url, late) == (16, 0)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT ts), min(value), max(value) FROM readings"
        ).fetchone()
        assert rows == (56, 56, 0.0, 55.0)
        assert len(chunks(conn)) == 1


@on_timescale
def test_retention_drops_only_chunks_past_the_window(database_url: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO reading_data (meter_id, channel, ts, value) VALUES"
            " ('M1', '1.8.0', %s, 1), ('M1', '1.8.0', %s, 2), ('M1', '1.8.0', %s, 3)",
            (now - timedelta(days=1200), now - timedelta(days=1000), now - timedelta(days=2)),
        )
        assert len(chunks(conn)) == 3
        conn.execute("CALL run_job(%s)", (job_id(conn, "policy_retention", "reading_data"),))
        left = conn.execute("SELECT value FROM readings ORDER BY ts").fetchall()
        assert left == [(2.0,), (3.0,)]
        assert len(chunks(conn)) == 2


@on_timescale
def test_continuous_aggregate_policies_materialise_buckets(database_url: str) -> None:
    # 10:00-12:00 UTC is 12:00-14:00 in Johannesburg: one local day.
    start = (datetime.now(UTC) - timedelta(days=3)).replace(hour=10, minute=0, second=0,
                                                            microsecond=0)  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO reading_data (meter_id, channel, ts, value)"
            " SELECT 'M1', '1.8.0', %s + make_interval(mins => 15 * i), i"
            " FROM generate_series(0, 7) AS i",
            (start,),
        )
        materialized = {}
        for view in ("readings_hourly", "readings_daily"):
            schema, table = conn.execute(
                "SELECT materialization_hypertable_schema, materialization_hypertable_name"
                " FROM timescaledb_information.continuous_aggregates WHERE view_name = %s",
                (view,),
            ).fetchone() or ("", "")
            count_sql = f'SELECT count(*) FROM "{schema}"."{table}"'
            assert conn.execute(count_sql).fetchone() == (0,)  # type: ignore[arg-type]
            conn.execute(
                "CALL run_job(%s)",
                (job_id(conn, "policy_refresh_continuous_aggregate", view),),
            )
            materialized[view] = conn.execute(count_sql).fetchone()  # type: ignore[arg-type]
        hourly = conn.execute(
            "SELECT bucket, samples, first_value, last_value FROM readings_hourly ORDER BY 1"
        ).fetchall()
    assert materialized == {"readings_hourly": (2,), "readings_daily": (1,)}
    assert hourly == [(start, 4, 0.0, 3.0), (start + timedelta(hours=1), 4, 4.0, 7.0)]


# --- Both variants give the same buckets -------------------------------------------------------


def expected_buckets(
    rows: list[tuple[datetime, float]], bucket_of: Callable[[datetime], datetime]
) -> list[tuple[datetime, float, float, float, int, float, float]]:
    """Independent of the database: (bucket, min, max, avg, samples, first, last)."""
    out = []
    for bucket, group in groupby(sorted(rows), key=lambda r: bucket_of(r[0])):
        values = [v for _, v in group]
        out.append(
            (bucket, min(values), max(values), statistics.fmean(values), len(values),
             values[0], values[-1])
        )  # fmt: skip
    return out


def utc_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def local_day(zone: str) -> Callable[[datetime], datetime]:
    tz = ZoneInfo(zone)

    def bucket(ts: datetime) -> datetime:
        local = ts.astimezone(tz)
        return datetime(local.year, local.month, local.day, tzinfo=tz).astimezone(UTC)

    return bucket


@pytest.fixture
def both_servers(backing: BackingServices, timescale_admin_url: str) -> list[DbServer]:
    return [DbServer(PLAIN, backing.admin_url), DbServer(TIMESCALE, timescale_admin_url)]


def refresh(conn: psycopg.Connection[tuple[object, ...]], view: str, end: datetime) -> None:
    """Refresh ``view`` up to ``end``, after its policy job if that is running right now.

    A freshly migrated (not cloned) database has TimescaleDB's scheduler, whose first run of
    each refresh policy may overlap ours; the policies are unscheduled first so it happens at
    most once.
    """
    conn.execute(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_refresh_continuous_aggregate'"
    )
    for _ in range(100):
        try:
            conn.execute("CALL refresh_continuous_aggregate(%s::regclass, NULL, %s)", (view, end))
            return
        except psycopg.errors.LockNotAvailable:
            time.sleep(0.1)
    raise AssertionError(f"{view} stayed locked by a concurrent refresh")


@pytest.mark.parametrize(
    ("zone", "first_day"),
    [
        ("Africa/Johannesburg", datetime(2026, 11, 30, 18, tzinfo=UTC)),
        # Days of 25 and 23 hours: the October and March DST changes in Europe.
        ("Europe/Berlin", datetime(2026, 10, 24, 18, tzinfo=UTC)),
        ("Europe/Berlin", datetime(2026, 3, 28, 18, tzinfo=UTC)),
    ],
)
def test_both_variants_bucket_hours_in_utc_and_days_in_the_deployment_zone(
    both_servers: list[DbServer], zone: str, first_day: datetime
) -> None:
    # Every 20 minutes for 36 hours; integer values keep avg exact whatever the summation order.
    rows = [(first_day + timedelta(minutes=20 * i), float(i % 17)) for i in range(108)]
    results = {}
    for server in both_servers:
        name = f"gw_zone_{uuid.uuid4().hex[:12]}"
        create_database(server.admin_url, name)
        url = with_database(server.admin_url, name)
        try:
            apply_migrations(url, timescale=server.mode, time_zone=zone)
            with psycopg.connect(url, autocommit=True) as conn:
                # A session zone far from UTC and the deployment must change nothing.
                conn.execute("SET TIME ZONE 'Asia/Kolkata'")
                with conn.cursor().copy(
                    "COPY reading_data (meter_id, channel, ts, value) FROM STDIN"
                ) as copy:
                    for ts, value in rows:
                        copy.write_row(("M1", "1.8.0", ts, value))
                if server.mode is TimescaleMode.ON:
                    # Materialise the first half only: the rest comes from the raw rows.
                    middle = first_day + timedelta(hours=18)
                    refresh(conn, "readings_hourly", middle)
                    refresh(conn, "readings_daily", middle + timedelta(days=1))
                results[server.variant] = {
                    view: conn.execute(
                        "SELECT bucket, min_value, max_value, avg_value, samples, first_value,"  # type: ignore[arg-type]
                        f" last_value FROM {view} WHERE meter_id = 'M1' ORDER BY bucket"
                    ).fetchall()
                    for view in ("readings_hourly", "readings_daily")
                }
        finally:
            drop_database(server.admin_url, name)
    hourly = expected_buckets(rows, utc_hour)
    daily = expected_buckets(rows, local_day(zone))
    assert len(hourly) == 36 and len(daily) in (2, 3)
    for variant, views in results.items():
        assert views["readings_hourly"] == hourly, variant
        assert views["readings_daily"] == daily, variant
