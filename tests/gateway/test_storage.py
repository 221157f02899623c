"""The SQL read model: `readings`, hourly/daily aggregates, comms state (both variants)."""

from __future__ import annotations

import psycopg
import pytest

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
