"""Writes batches of received work to PostgreSQL in one transaction each (the storage layer).

Readings are COPYed (binary) into a per-connection temporary staging table and moved with one
``INSERT … ON CONFLICT DO UPDATE``: COPY straight into the keyed table would fail the whole
batch on a single duplicate, and duplicates are normal here (QoS 1 redelivery, meters
resending). The rule for a reading whose (meter, channel, ts) is already stored:

* better quality replaces worse (``measured`` > ``backfilled`` > ``estimated``);
* the same quality with another value keeps the stored value and records the arrival in
  ``reading_conflicts`` (once per distinct value);
* worse quality is ignored (``superseded``), and an identical redelivery is a silent duplicate.

Within one batch the best reading of a key wins, the earliest among equals (as across batches).
Events are keyed on their content (``event_key``), dead letters on topic and payload hash (a
redelivery counts up ``deliveries``). The same transaction registers unknown meters as
unverified and advances ``last_seen``.

psycopg's exceptions are translated here, once, into ``StorageUnavailableError`` (retry the
batch) or ``StorageRejectedError`` (the data was refused).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Final

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gateway.detection.queue import QUEUE_EVENTS, QUEUE_FROM_STAGE
from gateway.errors import StorageError, StorageRejectedError, StorageUnavailableError
from gateway.ingest.work import DeadLetter, MeterEvent, Work

__all__ = [
    "STAGING_DDL",
    "BatchResult",
    "BatchStore",
    "event_key",
    "translate_error",
    "write_batch",
]

STAGING_DDL: Final = """
CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    meter_id text COLLATE "C", ts timestamptz, channel text COLLATE "C", value float8,
    raw_ts text, quality text
) ON COMMIT DELETE ROWS
"""
_COPY: Final = (
    "COPY ingest_stage (meter_id, ts, channel, value, raw_ts, quality) FROM STDIN (FORMAT BINARY)"
)
# Column order is protocols.telemetry.Reading's field order: readings are written as they are.
_STAGE_TYPES: Final = ("text", "timestamptz", "text", "float8", "text", "text")


def _rank(column: str) -> str:
    return f"CASE {column} WHEN 'measured' THEN 3 WHEN 'backfilled' THEN 2 ELSE 1 END"


# Each staged reading inserted, or replacing a stored row of worse quality; ``xmax = 0`` tells a
# fresh row from a replaced one. An upsert cannot touch one row twice: when a batch holds a key
# more than once (a redelivery within the batch) PostgreSQL refuses it, and the batch is written
# again with _UPSERT_DEDUP: one row per key, the best quality, then the first staged (the
# staging table is emptied at every commit and filled by one COPY, so ctid order is arrival
# order). Paying for that only when it happens is cheaper than preventing it: sorting every
# batch costs about a tenth of the writer's server time, and hashing every key while staging
# half of the client's COPY time. (TimescaleDB 2.28 does not refuse the double touch of a row
# that was in a compressed chunk: it applies the rule row by row in staging order, which ends
# in the same stored value; only ``readings_replaced`` then counts each step of a chain of
# upgrades within the batch.)
_UPSERT_BODY: Final = f"""
    INSERT INTO reading_data AS r (meter_id, channel, ts, value, raw_ts, quality)
    SELECT meter_id, channel, ts, value, raw_ts, quality FROM {{source}}
    ON CONFLICT (meter_id, channel, ts) DO UPDATE
    SET value = excluded.value, raw_ts = excluded.raw_ts, quality = excluded.quality,
        received_at = excluded.received_at
    WHERE {_rank("excluded.quality")} > {_rank("r.quality")}
    RETURNING xmax = 0 AS fresh
"""
_COUNT_WRITTEN: Final = (
    "SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh) FROM written"
)
_UPSERT: Final = f"WITH written AS ({_UPSERT_BODY.format(source='ingest_stage')}) {_COUNT_WRITTEN}"
_UPSERT_DEDUP: Final = f"""
WITH staged AS (
    SELECT DISTINCT ON (meter_id, channel, ts) meter_id, channel, ts, value, raw_ts, quality
    FROM ingest_stage
    ORDER BY meter_id, channel, ts, {_rank("quality")} DESC, ctid
), written AS ({_UPSERT_BODY.format(source="staged")})
{_COUNT_WRITTEN}
"""
# Only run when some staged readings were not written: classify them against what is stored.
_CLASSIFY: Final = """
WITH kept AS (
    SELECT s.meter_id, s.channel, s.ts, s.quality, s.value, s.raw_ts,
           r.value AS stored_value, r.quality AS stored_quality
    FROM ingest_stage s JOIN reading_data r USING (meter_id, channel, ts)
    WHERE (s.value, s.quality) IS DISTINCT FROM (r.value, r.quality)
), recorded AS (
    INSERT INTO reading_conflicts (meter_id, channel, ts, quality, value, raw_ts, stored_value)
    SELECT meter_id, channel, ts, quality, value, raw_ts, stored_value
    FROM kept WHERE quality = stored_quality
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM recorded),
       (SELECT count(*) FROM kept WHERE quality <> stored_quality)
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
_EVENTS: Final = """
INSERT INTO meter_events (meter_id, ts, type, details, raw_ts, event_key)
SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::jsonb[], %s::text[],
                     %s::bytea[])
ON CONFLICT DO NOTHING
"""
_REPLIES: Final = """
INSERT INTO command_replies (meter_id, message_id, result, reason, ts, relay, valve)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
                     %s::text[], %s::text[])
ON CONFLICT DO NOTHING
"""
_DEAD_LETTERS: Final = """
INSERT INTO dead_letters AS d
    (topic, payload, reason, detail, payload_length, payload_sha256, deliveries)
SELECT * FROM unnest(%s::text[], %s::bytea[], %s::text[], %s::text[], %s::int[], %s::bytea[],
                     %s::int[])
ON CONFLICT (payload_sha256, topic) DO UPDATE
SET deliveries = d.deliveries + excluded.deliveries, last_received_at = now()
RETURNING xmax = 0
"""
# SQLSTATE classes after which the same batch may well succeed: connection exception,
# transaction rollback (serialization, deadlock), insufficient resources, operator intervention
# (shutdown, statement timeout), system error; and lock_not_available.
_TRANSIENT_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_STATES: Final = frozenset({"55P03"})


@dataclass(frozen=True, slots=True)
class BatchResult:
    readings_staged: int = 0
    """Readings received in the batch."""
    readings_stored: int = 0
    """Readings stored for a key that had none."""
    events_stored: int = 0
    dead_letters: int = 0
    """Dead letters stored for the first time."""
    readings_replaced: int = 0
    """Readings that replaced a stored one of worse quality."""
    readings_conflicts: int = 0
    """Readings refused for another stored value of the same quality (newly recorded)."""
    readings_superseded: int = 0
    """Readings ignored because a better-quality one is stored."""
    dead_letters_repeated: int = 0
    """Redeliveries of messages already dead-lettered (counted, not stored again)."""

    @property
    def duplicates(self) -> int:
        """Readings identical to what was stored (redelivery), or an already recorded conflict."""
        return (
            self.readings_staged
            - self.readings_stored
            - self.readings_replaced
            - self.readings_conflicts
            - self.readings_superseded
        )

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(BatchResult))
        )


def event_key(event: MeterEvent) -> bytes:
    """Identity of an event at its instant: SHA-256 over its type and canonical details."""
    body = orjson.dumps(
        [event.event.type.value, dict(event.event.details)], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(body).digest()


def translate_error(exc: psycopg.Error) -> StorageError:
    """The storage error for a psycopg exception: unavailable (retry) or rejected (data)."""
    state = exc.sqlstate or ""
    transient = (
        isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        or state[:2] in _TRANSIENT_CLASSES
        or state in _TRANSIENT_STATES
    )
    kind = StorageUnavailableError if transient else StorageRejectedError
    return kind(f"{type(exc).__name__}: {str(exc).strip()[:400]}")


async def write_batch(
    conn: AsyncConnection[tuple[object, ...]], batch: Sequence[Work]
) -> BatchResult:
    """Store ``batch`` in one transaction on ``conn`` (which must be idle, not autocommit).

    Raises ``StorageUnavailableError`` or ``StorageRejectedError``; nothing is stored then.
    """
    try:
        try:
            return await _write(conn, batch, dedup=False)
        except psycopg.errors.CardinalityViolation:  # a key twice in the batch: rolled back
            return await _write(conn, batch, dedup=True)
    except psycopg.Error as exc:
        raise translate_error(exc) from exc


async def _write(
    conn: AsyncConnection[tuple[object, ...]], batch: Sequence[Work], *, dedup: bool
) -> BatchResult:
    staged = stored = replaced = conflicts = superseded = 0
    events = dead = repeated = 0
    async with conn.transaction():
        cur = conn.cursor()
        if any(w.readings for w in batch):
            async with cur.copy(_COPY) as copy:
                copy.set_types(_STAGE_TYPES)
                for work in batch:
                    for reading in work.readings:
                        await copy.write_row(reading)
                    staged += len(work.readings)
            await cur.execute(_UPSERT_DEDUP if dedup else _UPSERT)
            stored, replaced = _counts(await cur.fetchone(), 2)
            if stored + replaced < staged:
                await cur.execute(_CLASSIFY)
                conflicts, superseded = _counts(await cur.fetchone(), 2)
            # One set-based statement registers unknown meters and refreshes last-seen.
            await cur.execute(_TOUCH_FROM_STAGE)
            await cur.execute(QUEUE_FROM_STAGE)  # what detection must re-evaluate
        touched: set[str] = set()
        meter_events = [e for w in batch for e in w.events]
        if meter_events:
            await cur.execute(
                _EVENTS,
                (
                    [e.meter_id for e in meter_events],
                    [e.event.ts for e in meter_events],
                    [e.event.type.value for e in meter_events],
                    [Jsonb(dict(e.event.details)) for e in meter_events],
                    [e.event.raw_ts for e in meter_events],
                    [event_key(e) for e in meter_events],
                ),
            )
            events = max(cur.rowcount, 0)
            touched.update(e.meter_id for e in meter_events)
            spans: dict[str, tuple[datetime, datetime]] = {}
            for e in meter_events:
                lo, hi = spans.get(e.meter_id, (e.event.ts, e.event.ts))
                spans[e.meter_id] = (min(lo, e.event.ts), max(hi, e.event.ts))
            await cur.executemany(QUEUE_EVENTS, [(m, lo, hi) for m, (lo, hi) in spans.items()])
        statuses = {w.status.meter_id: w.status for w in batch if w.status is not None}
        touched.update(statuses)
        replies = [w.reply for w in batch if w.reply is not None]
        touched.update(r.meter_id for r in replies)
        if touched:
            # Sorted so that concurrent gateways lock meter rows in the same order (no deadlock).
            await cur.executemany(_TOUCH_ONE, [(m,) for m in sorted(touched)])
        if statuses:
            await cur.executemany(
                "UPDATE meters SET online = %s, status = coalesce(%s, status),"
                " status_received_at = CASE WHEN %s THEN now() ELSE status_received_at END"
                " WHERE meter_id = %s",
                [
                    (
                        s.online,
                        Jsonb(s.document) if s.document is not None else None,
                        s.document is not None,
                        m,
                    )
                    for m, s in sorted(statuses.items())
                ],
            )
        if replies:
            # Applied to their commands by the command loop (gateway.control.dispatch).
            await cur.execute(
                _REPLIES,
                (
                    [r.meter_id for r in replies],
                    [r.reply.command_id for r in replies],
                    [r.reply.result for r in replies],
                    [r.reply.reason for r in replies],
                    [r.reply.ts for r in replies],
                    [r.reply.relay for r in replies],
                    [r.reply.valve for r in replies],
                ),
            )
        letters = _dead_letters(batch)
        if letters:
            await cur.execute(
                _DEAD_LETTERS,
                (
                    [d.topic for d, _ in letters],
                    [d.payload for d, _ in letters],
                    [d.reason for d, _ in letters],
                    [d.detail for d, _ in letters],
                    [d.length for d, _ in letters],
                    [d.sha256 for d, _ in letters],
                    [n for _, n in letters],
                ),
            )
            dead = sum(1 for (fresh,) in await cur.fetchall() if fresh)
            repeated = sum(n for _, n in letters) - dead
    return BatchResult(
        readings_staged=staged,
        readings_stored=stored,
        events_stored=events,
        dead_letters=dead,
        readings_replaced=replaced,
        readings_conflicts=conflicts,
        readings_superseded=superseded,
        dead_letters_repeated=repeated,
    )


def _counts(row: tuple[object, ...] | None, n: int) -> tuple[int, ...]:
    if row is None:
        return (0,) * n
    return tuple(int(str(v)) for v in row[:n])


def _dead_letters(batch: Sequence[Work]) -> list[tuple[DeadLetter, int]]:
    """Distinct dead letters of the batch with their delivery counts (first copy kept)."""
    seen: dict[tuple[bytes, str], tuple[DeadLetter, int]] = {}
    for work in batch:
        if work.dead is not None:
            key = (work.dead.sha256, work.dead.topic)
            first, count = seen.get(key, (work.dead, 0))
            seen[key] = (first, count + 1)
    return list(seen.values())


class BatchStore:
    """Writes a batch on a connection from ``pool``: the pipeline's writer.

    Waits at most ``connect_timeout_s`` for a connection, so that the pipeline's retry loop
    (with its backoff and health flag), not the pool, is what waits out an outage.
    """

    def __init__(self, pool: AsyncConnectionPool, *, connect_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._timeout = connect_timeout_s

    async def __call__(self, batch: Sequence[Work]) -> BatchResult:
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                return await write_batch(conn, batch)
        except psycopg.Error as exc:  # PoolTimeout, or the connection failing on return
            raise translate_error(exc) from exc
