"""The in-memory meter zones follow the registry: loaded at start, then every change notified."""

from __future__ import annotations

import asyncio
from datetime import UTC
from zoneinfo import ZoneInfo

import psycopg

from gateway.ingest.zones import APPLICATION_NAME, MeterZones
from tests.plugins.gateway import wait_for_value


def execute(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


async def test_zones_are_loaded_then_follow_any_writer(database_url: str) -> None:
    execute(
        database_url,
        "INSERT INTO meters (meter_id, time_zone) VALUES"
        " ('A', 'Africa/Johannesburg'), ('B', 'UTC'), ('C', 'Not/AZone')",
    )
    zones = MeterZones(refresh_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(zones.run(database_url, stop))
    try:
        await asyncio.wait_for(zones.listening.wait(), 10)
        assert zones("A") == ZoneInfo("Africa/Johannesburg")
        assert zones("B") is UTC and zones("C") is UTC and zones("unknown") is UTC
        assert len(zones) == 1
        # Changed by plain SQL (another gateway, an operator): notified by the trigger.
        execute(database_url, "UPDATE meters SET time_zone = 'Europe/Berlin' WHERE meter_id = 'B'")
        execute(database_url, "UPDATE meters SET time_zone = 'UTC' WHERE meter_id = 'A'")
        execute(database_url, "INSERT INTO meters (meter_id, time_zone) VALUES ('D', 'Asia/Tokyo')")
        expected = (UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Tokyo"))
        assert await wait_for_value(lambda: (zones("A"), zones("B"), zones("D")), expected) == (
            expected
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_listener_survives_a_cut_connection(database_url: str) -> None:
    zones = MeterZones(refresh_s=3600, retry_max_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(zones.run(database_url, stop))
    try:
        await asyncio.wait_for(zones.listening.wait(), 10)
        # Cut the listener's connection; a change made meanwhile is found after reconnecting
        # (notified to the new session, or read by the reload that follows LISTEN).
        cut = execute(
            database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE application_name = '{APPLICATION_NAME}' AND datname = current_database()",
        )
        assert cut == [(True,)]
        execute(
            database_url, "INSERT INTO meters (meter_id, time_zone) VALUES ('E', 'Europe/Berlin')"
        )
        assert await wait_for_value(lambda: zones("E"), ZoneInfo("Europe/Berlin")) == ZoneInfo(
            "Europe/Berlin"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
