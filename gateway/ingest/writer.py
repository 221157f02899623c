"""Writes batches of received work to PostgreSQL in one transaction each.

Readings are COPYed (binary) into a per-connection temporary staging table and moved with
``INSERT … ON CONFLICT DO NOTHING``: COPY straight into the keyed table would fail the whole batch
on a single duplicate, and duplicates are normal here (QoS 1 redelivery, meters resending).
The same transaction registers unknown meters as unverified and advances ``last_seen``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from gateway.detection.queue import QUEUE_EVENTS, QUEUE_FROM_STAGE
from gateway.ingest.work import Work

__all__ = ["STAGING_DDL", "BatchResult", "write_batch"]

STAGING_DDL: Final = """
CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    meter_id text COLLATE "C", ts timestamptz, channel text COLLATE "C", value float8,
    raw_ts text, quality text
) ON COMMIT DELETE ROWS
"""
# last_seen is kept to within 10 seconds: a meter row is rewritten at most that often.
_TOUCH_FROM_STAGE: Final = """
INSERT INTO meters (meter_id, last_seen, last_reading_ts)
SELECT meter_id, now(), max(ts) FROM ingest_stage GROUP BY meter_id ORDER BY meter_id
ON CONFLICT (meter_id) DO UPDATE
SET last_seen = excluded.last_seen,
    last_reading_ts = greatest(meters.last_reading_ts, excluded.last_reading_ts)
WHERE meters.last_seen IS NULL
   OR meters.last_seen < excluded.last_seen - interval '10 seconds'
   OR meters.last_reading_ts IS NULL
"""
_TOUCH_ONE: Final = """
INSERT INTO meters (meter_id, last_seen) VALUES (%s, now())
ON CONFLICT (meter_id) DO UPDATE SET last_seen = excluded.last_seen
WHERE meters.last_seen IS NULL
   OR meters.last_seen < excluded.last_seen - interval '10 seconds'
"""
# Column order is protocols.telemetry.Reading's field order: readings are written as they are.
_STAGE_TYPES: Final = ("text", "timestamptz", "text", "float8", "text", "text")


@dataclass(frozen=True, slots=True)
class BatchResult:
    readings_staged: int
    readings_stored: int
    events_stored: int
    dead_letters: int

    @property
    def duplicates(self) -> int:
        return self.readings_staged - self.readings_stored


async def write_batch(
    conn: AsyncConnection[tuple[object, ...]], batch: Sequence[Work]
) -> BatchResult:
    """Store ``batch`` in one transaction on ``conn`` (which must be idle, not autocommit)."""
    staged = stored = events = dead = 0
    async with conn.transaction():
        cur = conn.cursor()
        if any(w.readings for w in batch):
            async with cur.copy(
                "COPY ingest_stage (meter_id, ts, channel, value, raw_ts, quality)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(_STAGE_TYPES)
                for work in batch:
                    for reading in work.readings:
                        await copy.write_row(reading)
                    staged += len(work.readings)
            await cur.execute(
                "INSERT INTO reading_data (meter_id, channel, ts, value, raw_ts, quality)"
                " SELECT meter_id, channel, ts, value, raw_ts, quality FROM ingest_stage"
                " ON CONFLICT DO NOTHING"
            )
            stored = max(cur.rowcount, 0)
            # One set-based statement registers unknown meters and refreshes last-seen.
            await cur.execute(_TOUCH_FROM_STAGE)
            await cur.execute(QUEUE_FROM_STAGE)  # what detection must re-evaluate
        touched: set[str] = set()
        event_rows = [
            (
                e.meter_id,
                e.event.ts,
                e.event.type.value,
                Jsonb(dict(e.event.details)),
                e.event.raw_ts,
            )
            for w in batch
            for e in w.events
        ]
        if event_rows:
            await cur.executemany(
                "INSERT INTO meter_events (meter_id, ts, type, details, raw_ts)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                event_rows,
            )
            events = len(event_rows)
            spans: dict[str, tuple[datetime, datetime]] = {}
            for meter_id, ts, *_ in event_rows:
                lo, hi = spans.get(meter_id, (ts, ts))
                spans[meter_id] = (min(lo, ts), max(hi, ts))
            await cur.executemany(QUEUE_EVENTS, [(m, lo, hi) for m, (lo, hi) in spans.items()])
            touched.update(row[0] for row in event_rows)
        statuses = {w.status.meter_id: w.status for w in batch if w.status is not None}
        touched.update(statuses)
        if touched:
            # Sorted so that concurrent gateways lock meter rows in the same order (no deadlock).
            await cur.executemany(_TOUCH_ONE, [(m,) for m in sorted(touched)])
        if statuses:
            await cur.executemany(
                "UPDATE meters SET online = %s, status = coalesce(%s, status) WHERE meter_id = %s",
                [
                    (s.online, Jsonb(s.document) if s.document is not None else None, m)
                    for m, s in sorted(statuses.items())
                ],
            )
        dead_rows = [
            (w.dead.topic, w.dead.payload, w.dead.reason, w.dead.detail)
            for w in batch
            if w.dead is not None
        ]
        if dead_rows:
            await cur.executemany(
                "INSERT INTO dead_letters (topic, payload, reason, detail) VALUES (%s, %s, %s, %s)",
                dead_rows,
            )
            dead = len(dead_rows)
    return BatchResult(staged, stored, events, dead)
