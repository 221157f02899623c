"""SQL of the meter card: latest value per channel, aggregates, events, tokens, commands."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = ["buckets", "events", "latest_per_channel", "tokens"]

# A skip scan over the (meter_id, channel, ts) key: one index probe per channel, whatever the
# length of the meter's history.
_LATEST: Final = """
WITH RECURSIVE ch AS (
    (SELECT channel FROM reading_data WHERE meter_id = %(m)s ORDER BY channel LIMIT 1)
    UNION ALL
    SELECT (SELECT r.channel FROM reading_data r
            WHERE r.meter_id = %(m)s AND r.channel > ch.channel ORDER BY r.channel LIMIT 1)
    FROM ch WHERE ch.channel IS NOT NULL
)
SELECT ch.channel, l.ts, l.value, l.quality
FROM ch CROSS JOIN LATERAL (
    SELECT ts, value, quality FROM reading_data r
    WHERE r.meter_id = %(m)s AND r.channel = ch.channel ORDER BY ts DESC LIMIT 1
) l
WHERE ch.channel IS NOT NULL
ORDER BY ch.channel
"""

Interval = Literal["hour", "day"]
_VIEW: Final = {"hour": "readings_hourly", "day": "readings_daily"}


async def latest_per_channel(conn: AsyncConnection[Any], meter_id: str) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_LATEST, {"m": meter_id})
        return await cur.fetchall()


async def buckets(
    conn: AsyncConnection[Any],
    meter_id: str,
    *,
    channel: str,
    interval: Interval,
    since: datetime,
    until: datetime,
) -> list[dict[str, Any]]:
    """Aggregated readings of one channel, oldest first, with ``since <= bucket < until``."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT bucket, min_value, max_value, avg_value, first_value, last_value, samples"
            f" FROM {_VIEW[interval]} WHERE meter_id = %s AND channel = %s"
            " AND bucket >= %s AND bucket < %s ORDER BY bucket",
            (meter_id, channel, since, until),
        )
        return await cur.fetchall()


async def events(conn: AsyncConnection[Any], meter_id: str, *, limit: int) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT ts, type, details, received_at FROM meter_events WHERE meter_id = %s"
            " ORDER BY ts DESC LIMIT %s",
            (meter_id, limit),
        )
        return await cur.fetchall()


async def tokens(conn: AsyncConnection[Any], meter_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The meter's last tokens, newest first; only the last four digits of each token."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT t.token_id, t.sale_id, t.kind, right(t.token, 4) AS token_last4, t.tenths,"
            " t.state, t.reason, s.issued_at, t.delivered_at, t.result_at"
            " FROM vend_tokens t JOIN sales s USING (sale_id) WHERE t.meter_id = %s"
            " ORDER BY t.token_id DESC LIMIT %s",
            (meter_id, limit),
        )
        return await cur.fetchall()
