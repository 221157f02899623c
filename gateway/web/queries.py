"""SQL of the meter card: latest value per channel, aggregates, events, tokens, commands."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = [
    "LATEST_WINDOW",
    "VIEW_SQL",
    "WINDOW_SQL",
    "SchemaVariant",
    "buckets",
    "events",
    "latest_per_channel",
    "tokens",
]

LATEST_WINDOW: Final = timedelta(days=7)
"""The card's latest values are those of the channels that reported in this long up to the
meter's last reading (on both schema variants)."""

# Plain PostgreSQL: a skip scan over the (meter_id, channel, ts) key, one index probe per
# channel whatever the length of the meter's history; channels older than the window are then
# dropped (bounding the probes by ts instead would walk each channel's whole history).
_LATEST_PLAIN: Final = """
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
WHERE ch.channel IS NOT NULL AND l.ts >= coalesce(%(since)s::timestamptz, '-infinity')
ORDER BY ch.channel
"""
# TimescaleDB: every probe of that skip scan plans and opens every chunk of the hypertable
# (a year of daily chunks: 1.6 s a card). A range on ts lets chunk exclusion keep the window's
# few chunks; the meter's rows in them are few.
_LATEST_TIMESCALE: Final = """
SELECT DISTINCT ON (channel) channel, ts, value, quality FROM reading_data
WHERE meter_id = %(m)s AND ts >= coalesce(%(since)s::timestamptz, '-infinity')
ORDER BY channel, ts DESC
"""

Interval = Literal["hour", "day"]

# Charts on plain PostgreSQL aggregate the requested window of reading_data themselves instead
# of reading readings_hourly / readings_daily. Those are views with GROUP BY on date_trunc(ts)
# there: a predicate on their bucket reaches reading_data only as a filter on date_trunc(...),
# which no index serves, so a 24 h chart read the meter's whole history (a year of 15-minute
# data: 35 000 rows, one heap page each once many meters share the pages). Here the bucket
# predicate is kept for exact bucket semantics, and an implied range on ts (a bucket starts at
# or before its readings, and a reading lies less than one bucket length after its bucket's
# start; local days are at most 25 h, 2 days leaves room for any zone's transitions) makes it a
# range scan of the (meter_id, channel, ts) key. Buckets are those of the views: UTC hours, and
# days of the deployment time zone recorded in deployment_settings.
#
# On TimescaleDB the views are continuous aggregates: a bucket range on them reads the
# materialised buckets (and the raw rows after the last refresh), cheaper than aggregating the
# raw rows, which for 30 days means decompressing a month of chunks.
_BUCKET: Final = {
    "hour": "date_trunc('hour', r.ts, 'UTC')",
    "day": "date_trunc('day', r.ts, z.time_zone)",
}
_SLACK: Final = {"hour": "1 hour", "day": "2 days"}
WINDOW_SQL: Final = {
    interval: f"""
SELECT {bucket} AS bucket,
       min(r.value) AS min_value, max(r.value) AS max_value, avg(r.value) AS avg_value,
       (array_agg(r.value ORDER BY r.ts))[1] AS first_value,
       (array_agg(r.value ORDER BY r.ts DESC))[1] AS last_value,
       count(*) AS samples
FROM deployment_settings z CROSS JOIN reading_data r
WHERE r.meter_id = %(m)s AND r.channel = %(c)s
  AND r.ts >= %(since)s AND r.ts < %(until)s::timestamptz + interval '{_SLACK[interval]}'
  AND {bucket} >= %(since)s AND {bucket} < %(until)s
GROUP BY 1
ORDER BY 1
"""
    for interval, bucket in _BUCKET.items()
}
"""The chart query of plain PostgreSQL per interval (parameters ``m``, ``c``, ``since``,
``until``)."""
VIEW_SQL: Final = {
    interval: "SELECT bucket, min_value, max_value, avg_value, first_value, last_value, samples"
    f" FROM {view} WHERE meter_id = %(m)s AND channel = %(c)s"
    " AND bucket >= %(since)s AND bucket < %(until)s ORDER BY bucket"
    for interval, view in (("hour", "readings_hourly"), ("day", "readings_daily"))
}
"""The chart query of TimescaleDB (the same parameters)."""


async def latest_per_channel(
    conn: AsyncConnection[Any], meter_id: str, *, last_reading: datetime | None, timescale: bool
) -> list[dict[str, Any]]:
    """The newest reading of each channel that reported in :data:`LATEST_WINDOW` up to
    ``last_reading`` (the meter's last reading time; None: of every channel), by channel."""
    since = last_reading - LATEST_WINDOW if last_reading is not None else None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _LATEST_TIMESCALE if timescale else _LATEST_PLAIN, {"m": meter_id, "since": since}
        )
        return await cur.fetchall()


async def buckets(
    conn: AsyncConnection[Any],
    meter_id: str,
    *,
    channel: str,
    interval: Interval,
    since: datetime,
    until: datetime,
    timescale: bool,
) -> list[dict[str, Any]]:
    """Aggregated readings of one channel, oldest first, with ``since <= bucket < until``."""
    query = (VIEW_SQL if timescale else WINDOW_SQL)[interval]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, {"m": meter_id, "c": channel, "since": since, "until": until})
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


class SchemaVariant:
    """Whether the database has the TimescaleDB schema, asked once: a schema keeps the variant
    it was created with (:mod:`gateway.db.migrate`)."""

    def __init__(self) -> None:
        self._timescale: bool | None = None

    async def timescale(self, conn: AsyncConnection[Any]) -> bool:
        if self._timescale is None:
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE variant = 'timescale')"
            )
            row = await cur.fetchone()
            self._timescale = bool(row and row[0])
        return self._timescale
