"""Storage: the SQL read model (`readings`, aggregates, comms state) and the batch writer's
rules (quality, conflicts, event keys, dead letters, error translation), on real PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.db.migrate import apply_migrations, load_migrations
from gateway.errors import StorageRejectedError, StorageUnavailableError
from gateway.ingest.consumer import decode_message
from gateway.ingest.work import Work
from gateway.ingest.writer import STAGING_DDL, BatchResult, BatchStore, write_batch
from gateway.settings import TimescaleMode
from protocols import Reading, Topics

pytestmark = pytest.mark.both_variants


def test_aggregates_and_comms_state(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO reading_data (meter_id, channel, ts, value) VALUES"
            " ('W1', '24.2.1', '2026-11-01 00:00Z', 10.0),"
            " ('W1', '24.2.1', '2026-11-01 00:15Z', 10.5),"
            " ('W1', '24.2.1', '2026-11-01 00:45Z', 11.5),"
            " ('W1', '24.2.1', '2026-11-01 01:00Z', 12.0),"
            " ('W1', '24.2.1', '2026-11-02 00:00Z', 20.0)"
        )
        conn.execute(
            "INSERT INTO meters (meter_id, reporting_interval_s, last_seen) VALUES"
            " ('A', 900, now() - interval '10 minutes'),"
            " ('B', 900, now() - interval '5 hours'),"
            " ('C', 900, now() - interval '4 days'),"
            " ('D', 900, NULL)"
        )
        hourly = conn.execute(
            "SELECT bucket, samples, min_value, max_value, first_value, last_value"
            " FROM readings_hourly WHERE meter_id = 'W1' ORDER BY bucket"
        ).fetchall()
        daily = conn.execute(
            "SELECT samples, last_value - first_value FROM readings_daily"
            " WHERE meter_id = 'W1' ORDER BY bucket"
        ).fetchall()
        comms = dict(conn.execute("SELECT meter_id, comms_state FROM meter_comms").fetchall())
        view = conn.execute("SELECT count(*) FROM readings WHERE meter_id = 'W1'").fetchone()
    assert [(h[1], h[2], h[3], h[4], h[5]) for h in hourly] == [
        (3, 10.0, 11.5, 10.0, 11.5),
        (1, 12.0, 12.0, 12.0, 12.0),
        (1, 20.0, 20.0, 20.0, 20.0),
    ]
    assert daily == [(4, 2.0), (1, 0.0)]
    assert comms == {"A": "ok", "B": "late", "C": "lost", "D": "never"}
    assert view == (5,)


# --- the writer: quality rule, conflicts, events, dead letters, error translation -------------

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def reading(value: float, quality: str = "measured", *, minute: int = 0, meter: str = "E1") -> Work:
    r = Reading(meter, T0 + timedelta(minutes=minute), "1.8.0", value, None, quality)
    return Work(topic=f"meters/{meter}/telemetry", payload=b"-", kind="telemetry", readings=[r])


async def write(url: str, *batch: Work) -> BatchResult:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(STAGING_DDL)
        await conn.commit()
        return await write_batch(conn, batch)


def stored(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT extract(minute FROM ts)::int, value, quality FROM reading_data ORDER BY ts"
        ).fetchall()


def conflicts(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT extract(minute FROM ts)::int, quality, value, stored_value"
            " FROM reading_conflicts ORDER BY ts, value"
        ).fetchall()


async def test_better_quality_replaces_worse_and_worse_is_ignored(database_url: str) -> None:
    first = await write(database_url, reading(5.0, "estimated"), reading(7.0, minute=1))
    assert (first.readings_stored, first.readings_replaced, first.duplicates) == (2, 0, 0)
    upgrade = await write(
        database_url, reading(5.5, "backfilled"), reading(6.0, "estimated", minute=1)
    )
    assert (upgrade.readings_replaced, upgrade.readings_superseded) == (1, 1)
    measured = await write(database_url, reading(5.75, "measured"))
    assert measured.readings_replaced == 1
    assert stored(database_url) == [(0, 5.75, "measured"), (1, 7.0, "measured")]
    assert conflicts(database_url) == []


async def test_same_quality_other_value_keeps_the_stored_one_and_records_it(
    database_url: str,
) -> None:
    await write(database_url, reading(10.0))
    result = await write(database_url, reading(11.0), reading(11.0), reading(10.0))
    # 11.0 twice (a conflict, then a redelivery of it) and 10.0 (identical: a silent duplicate)
    assert (result.readings_stored, result.readings_conflicts, result.duplicates) == (0, 1, 2)
    again = await write(database_url, reading(11.0))  # redelivered later: recorded once
    assert (again.readings_conflicts, again.duplicates) == (0, 1)
    assert stored(database_url) == [(0, 10.0, "measured")]
    assert conflicts(database_url) == [(0, "measured", 11.0, 10.0)]


async def test_within_one_batch_the_best_then_the_first_wins(database_url: str) -> None:
    result = await write(
        database_url,
        reading(1.0, "estimated"),
        reading(2.0),
        reading(3.0),
        reading(2.0),
        reading(4.0, "backfilled"),
    )
    assert (result.readings_staged, result.readings_stored) == (5, 1)
    assert (result.readings_conflicts, result.readings_superseded, result.duplicates) == (1, 2, 1)
    assert stored(database_url) == [(0, 2.0, "measured")]
    assert conflicts(database_url) == [(0, "measured", 3.0, 2.0)]


def event_work(meter: str, payload: bytes) -> Work:
    return decode_message(Topics(""), f"meters/{meter}/events", payload, now=T0 + timedelta(days=1))


async def test_distinct_events_at_one_instant_survive_and_redeliveries_do_not(
    database_url: str,
) -> None:
    one = b'{"ts":"2026-11-01T00:00:00Z","type":"token_accepted","details":{"token_id":"a"}}'
    two = b'{"ts":"2026-11-01T00:00:00Z","type":"token_accepted","details":{"token_id":"b"}}'
    reordered = b'{"type":"token_accepted","details":{"token_id":"a"},"ts":"2026-11-01T00:00:00Z"}'
    first = await write(database_url, event_work("E1", one), event_work("E1", two))
    again = await write(database_url, event_work("E1", one), event_work("E1", reordered))
    assert (first.events_stored, again.events_stored) == (2, 0)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT details->>'token_id' FROM meter_events ORDER BY 1").fetchall()
    assert rows == [("a",), ("b",)]


def bad(payload: bytes, topic: str = "meters/E1/telemetry") -> Work:
    return decode_message(Topics(""), topic, payload, now=T0)


async def test_a_redelivered_bad_message_is_stored_once_and_counted(database_url: str) -> None:
    first = await write(database_url, bad(b"{oops"), bad(b"{oops"), bad(b"{other"))
    again = await write(database_url, bad(b"{oops"))
    other_topic = await write(database_url, bad(b"{oops", "meters/E2/telemetry"))
    assert (first.dead_letters, first.dead_letters_repeated) == (2, 1)
    assert (again.dead_letters, again.dead_letters_repeated) == (0, 1)
    assert other_topic.dead_letters == 1
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT topic, payload, deliveries FROM dead_letters ORDER BY id"
        ).fetchall()
    assert rows == [
        ("meters/E1/telemetry", b"{oops", 3),
        ("meters/E1/telemetry", b"{other", 1),
        ("meters/E2/telemetry", b"{oops", 1),
    ]


async def test_an_oversized_message_keeps_its_head_length_and_hash(database_url: str) -> None:
    payload = b"[" + b"x" * (10 * 1024 * 1024)  # a 10 MB publish
    work = bad(payload)
    assert work.dead is not None and work.dead.reason == "oversized"
    await write(database_url, work, bad(payload))
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT length(payload), payload, payload_length, payload_sha256, deliveries"
            " FROM dead_letters"
        ).fetchone()
    assert row is not None
    assert row[0] == 64 * 1024 and bytes(row[1]) == payload[: 64 * 1024]
    assert row[2] == len(payload) and bytes(row[3]) == hashlib.sha256(payload).digest()
    assert row[4] == 2


async def test_database_errors_are_translated_once_transient_or_permanent(
    database_url: str,
) -> None:
    with pytest.raises(StorageRejectedError) as refused:
        await write(database_url, reading(1.0, "guessed"))  # violates the quality CHECK
    assert isinstance(refused.value.__cause__, psycopg.errors.CheckViolation)
    conn = await psycopg.AsyncConnection.connect(database_url)
    await conn.close()
    with pytest.raises(StorageUnavailableError):
        await write_batch(conn, [reading(1.0)])
    pool = AsyncConnectionPool(
        "postgresql://postgres@127.0.0.1:1/none", min_size=0, max_size=1, open=False
    )
    await pool.open(wait=False)
    try:
        with pytest.raises(StorageUnavailableError):
            await BatchStore(pool, connect_timeout_s=0.2)([reading(1.0)])
    finally:
        await pool.close()
    assert stored(database_url) == []


def test_upgrade_folds_repeated_dead_letters_and_keys_existing_events(
    empty_database_url: str,
) -> None:
    """Migration 0004 on a database with data: nothing is lost, repeated dead letters fold."""
    migrations = load_migrations()
    before = [m for m in migrations if m.version < 4]
    apply_migrations(empty_database_url, timescale=TimescaleMode.OFF, migrations=before)
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(
            "INSERT INTO dead_letters (topic, payload, reason, detail, received_at) VALUES"
            " ('meters/A/telemetry', '{oops', 'bad_json', 'x', '2026-11-01 00:00Z'),"
            " ('meters/A/telemetry', '{oops', 'bad_json', 'x', '2026-11-02 00:00Z'),"
            " ('meters/B/telemetry', '{oops', 'bad_json', 'x', '2026-11-03 00:00Z')"
        )
        conn.execute(
            "INSERT INTO meter_events (meter_id, ts, type, details) VALUES"
            " ('A', '2026-11-01 00:00Z', 'power_up', '{}'),"
            " ('A', '2026-11-01 00:00Z', 'power_down', '{\"v\": 1}')"
        )
    apply_migrations(empty_database_url, timescale=TimescaleMode.OFF)
    with psycopg.connect(empty_database_url) as conn:
        letters = conn.execute(
            "SELECT topic, deliveries, received_at, last_received_at, payload_length,"
            " payload_sha256 FROM dead_letters ORDER BY id"
        ).fetchall()
        keys = conn.execute(
            "SELECT count(DISTINCT event_key), count(*) FROM meter_events"
        ).fetchone()
    digest = hashlib.sha256(b"{oops").digest()
    day = [datetime(2026, 11, d, tzinfo=UTC) for d in (1, 2, 3)]
    assert [(t, n, r, last, length, bytes(h)) for t, n, r, last, length, h in letters] == [
        ("meters/A/telemetry", 2, day[0], day[1], 5, digest),
        ("meters/B/telemetry", 1, day[2], day[2], 5, digest),
    ]
    assert keys == (2, 2)
