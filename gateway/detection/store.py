"""Detection's SQL: the work queue, a meter's window of data, and applying alert transitions.

Every function takes a connection inside the caller's transaction, so that draining the queue,
re-evaluating the meters and writing their alerts, outbox rows and audit records commit together
(a crash re-evaluates the same meters; reconciliation makes that harmless).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway import audit
from gateway.detection.model import (
    AlertKind,
    EventRecord,
    MeterData,
    MeterProfile,
    Rules,
    Sample,
)
from gateway.detection.reconcile import Plan, StoredAlert
from gateway.detection.rules import CUMULATIVE

__all__ = [
    "RULE_CHANNELS",
    "Window",
    "apply_plan",
    "drain_queue",
    "enqueue_silent_meters",
    "load_alerts",
    "load_data",
    "load_profile",
]

RULE_CHANNELS: Final = (
    "1.8.0",
    "2.8.0",
    "1.7.0",
    "32.7.0",
    "52.7.0",
    "72.7.0",
    "24.2.1",
    "24.2.2",
    "water.flow",
)
"""The channels the rules read (and on which contact is judged)."""

_LOCK_KEY: Final = 0x64657465  # "dete": one detection drainer at a time across gateways


@dataclass(frozen=True, slots=True)
class Window:
    meter_id: str
    lo: datetime
    hi: datetime


async def drain_queue(conn: AsyncConnection[Any], limit: int) -> list[Window] | None:
    """Take up to ``limit`` queue entries, merged per meter; None when another gateway is
    draining (the lock is held until the caller's transaction ends)."""
    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOCK_KEY,))
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute(
        "DELETE FROM detection_queue WHERE id IN"
        " (SELECT id FROM detection_queue ORDER BY id LIMIT %s)"
        " RETURNING meter_id, lo, hi",
        (limit,),
    )
    merged: dict[str, Window] = {}
    for meter_id, first, last in await cur.fetchall():
        known = merged.get(meter_id)
        if known is not None:
            first, last = min(first, known.lo), max(last, known.hi)  # noqa: PLW2901
        merged[meter_id] = Window(meter_id, first, last)
    return sorted(merged.values(), key=lambda w: w.meter_id)


async def enqueue_silent_meters(conn: AsyncConnection[Any], rules: Rules) -> int:
    """Queue meters that were reporting live and have been silent past the comms threshold
    (in receive time) and have no open comms-loss alert, so the loop opens one at once."""
    cur = await conn.execute(
        "INSERT INTO detection_queue (meter_id, lo, hi)"
        " SELECT m.meter_id, m.last_reading_ts, m.last_reading_ts FROM meters m"
        " WHERE m.last_reading_ts IS NOT NULL"
        "   AND m.last_seen > now() - interval '7 days'"
        "   AND m.last_seen < now() - make_interval(secs => greatest("
        "       %s * m.reporting_interval_s, %s))"
        "   AND m.last_reading_ts >= m.last_seen - make_interval(secs => m.reporting_interval_s)"
        "   AND NOT EXISTS (SELECT 1 FROM alert_data a WHERE a.meter_id = m.meter_id"
        "       AND a.kind = 'comms_loss' AND a.withdrawn_at IS NULL"
        "       AND a.end_ts IS NULL AND a.resolved_at IS NULL)",
        (rules.comms_intervals, rules.comms_min_hours * 3600.0),
    )
    return max(cur.rowcount, 0)


async def load_profile(conn: AsyncConnection[Any], meter_id: str) -> MeterProfile | None:
    cur = await conn.execute(
        "SELECT utility, reporting_interval_s, time_zone, export_allowed, register_max"
        " FROM meters WHERE meter_id = %s",
        (meter_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return MeterProfile(meter_id, row[0], row[1], row[2], row[3], row[4])


async def load_alerts(
    conn: AsyncConnection[Any], meter_id: str, since: datetime
) -> list[StoredAlert]:
    """Alerts of the meter, not withdrawn, still open or ending at ``since`` or later, locked
    for update."""
    cur = await conn.execute(
        "SELECT id, kind, start_ts, end_ts, evidence, resolved_at IS NOT NULL FROM alert_data"
        " WHERE meter_id = %s AND withdrawn_at IS NULL AND (end_ts IS NULL OR end_ts >= %s)"
        " ORDER BY id FOR UPDATE",
        (meter_id, since),
    )
    return [
        StoredAlert(r[0], AlertKind(r[1]), r[2], r[3], r[4] or {}, r[5])
        for r in await cur.fetchall()
    ]


async def load_resolutions(
    conn: AsyncConnection[Any], meter_id: str, since: datetime
) -> dict[AlertKind, list[datetime]]:
    cur = await conn.execute(
        "SELECT kind, resolved_at FROM alert_data WHERE meter_id = %s AND withdrawn_at IS NULL"
        " AND resolved_at IS NOT NULL AND resolved_at >= %s ORDER BY resolved_at",
        (meter_id, since),
    )
    out: dict[AlertKind, list[datetime]] = {}
    for kind, at in await cur.fetchall():
        out.setdefault(AlertKind(kind), []).append(at)
    return out


async def load_data(conn: AsyncConnection[Any], meter_id: str, since: datetime) -> MeterData:
    """The meter's readings on the rule channels with ``ts >= since`` (plus the last register
    reading before it, so a drop or a gap across the boundary is seen) and its events."""
    cur = await conn.execute(
        "SELECT channel, ts, value, quality = 'measured', received_at FROM reading_data"
        " WHERE meter_id = %s AND channel = ANY(%s) AND ts >= %s ORDER BY channel, ts",
        (meter_id, list(RULE_CHANNELS), since),
    )
    channels: dict[str, list[Sample]] = {}
    for channel, ts, value, measured, received in await cur.fetchall():
        channels.setdefault(channel, []).append(Sample(ts, value, measured, received))
    cur = await conn.execute(
        "SELECT c.channel, p.ts, p.value, p.quality = 'measured', p.received_at"
        " FROM unnest(%s::text[]) AS c(channel) CROSS JOIN LATERAL ("
        "   SELECT ts, value, quality, received_at FROM reading_data r"
        "   WHERE r.meter_id = %s AND r.channel = c.channel AND r.ts < %s"
        "   ORDER BY r.ts DESC LIMIT 1) p",
        (list(CUMULATIVE), meter_id, since),
    )
    for channel, ts, value, measured, received in await cur.fetchall():
        channels.setdefault(channel, []).insert(0, Sample(ts, value, measured, received))
    cur = await conn.execute(
        "SELECT ts, type, received_at FROM meter_events WHERE meter_id = %s AND ts >= %s"
        " ORDER BY ts, type",
        (meter_id, since),
    )
    events = [EventRecord(ts, kind, received) for ts, kind, received in await cur.fetchall()]
    return MeterData(channels, events)


def alert_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """An ``alerts`` view row as the API's alert object (JSON-ready)."""
    return {
        "id": row["id"],
        "meter_id": row["meter_id"],
        "kind": row["kind"],
        "state": row["state"],
        "start": row["start"].isoformat(),
        "end": row["end"].isoformat() if row["end"] is not None else None,
        "detected_at": row["detected_at"].isoformat(),
        "severity": row["severity"],
        "evidence": row["evidence"],
        "acknowledged_by": row["acknowledged_by"],
        "note": row["note"],
    }


async def apply_plan(conn: AsyncConnection[Any], meter_id: str, plan: Plan) -> list[int]:
    """Write ``plan``'s transitions for one meter; returns the ids of the alerts opened."""
    opened: list[int] = []
    for episode in plan.opens:
        cur = await conn.execute(
            "INSERT INTO alert_data (meter_id, kind, severity, start_ts, end_ts, evidence)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (
                meter_id,
                episode.kind.value,
                episode.severity.value,
                episode.start,
                episode.end,
                Jsonb(dict(episode.evidence)),
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        opened.append(row[0])
    for alert, episode in plan.updates:
        await conn.execute(
            "UPDATE alert_data SET start_ts = %s, end_ts = %s, evidence = %s, updated_at = now()"
            " WHERE id = %s",
            (episode.start, episode.end, Jsonb(dict(episode.evidence)), alert.id),
        )
    for alert in plan.withdrawals:
        await conn.execute(
            "UPDATE alert_data SET withdrawn_at = now(), updated_at = now(),"
            " withdrawn_reason = 'later data shows the condition did not occur' WHERE id = %s",
            (alert.id,),
        )
        await audit.record(
            conn,
            actor=None,
            action="alert.withdraw",
            object=f"alert:{alert.id}",
            outcome="withdrawn",
            source="detection",
            detail={"meter_id": meter_id, "kind": alert.kind.value},
        )
    if opened:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM alerts WHERE id = ANY(%s) ORDER BY id", (opened,))
            rows = await cur.fetchall()
        await conn.cursor().executemany(
            "INSERT INTO alert_outbox (alert_id, event, payload) VALUES (%s, 'opened', %s)",
            [(row["id"], Jsonb(alert_document(row))) for row in rows],
        )
    return opened


def window_bounds(
    lo: datetime, stored: Sequence[StoredAlert], rules: Rules
) -> tuple[datetime, datetime]:
    """(judged_from, read_from): episodes reaching ``judged_from`` are reconciled; data is read
    from ``read_from`` so that neither they nor the stored alerts are cut short."""
    judged = min([lo, *(a.start for a in stored)])
    return judged, judged - timedelta(hours=rules.lookback_h)
