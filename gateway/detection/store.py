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
    "RawData",
    "Window",
    "apply_plan",
    "drain_queue",
    "enqueue_silent_meters",
    "load_alerts",
    "load_data",
    "load_profiles",
]

# The kinds the rules own. Other alerts on the work list (a command nobody could confirm)
# belong to other parts of the gateway and are never reconciled away here.
_RULE_KINDS: Final = [k.value for k in AlertKind]

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


async def load_profiles(
    conn: AsyncConnection[Any], meter_ids: Sequence[str]
) -> dict[str, MeterProfile]:
    cur = await conn.execute(
        "SELECT meter_id, utility, reporting_interval_s, time_zone, export_allowed, register_max"
        " FROM meters WHERE meter_id = ANY(%s)",
        (list(meter_ids),),
    )
    return {r[0]: MeterProfile(*r) for r in await cur.fetchall()}


async def load_alerts(
    conn: AsyncConnection[Any], since: Mapping[str, datetime]
) -> dict[str, list[StoredAlert]]:
    """Per meter, its alerts not withdrawn, still open or ending at its ``since`` or later,
    locked for update."""
    out: dict[str, list[StoredAlert]] = {m: [] for m in since}
    if not since:
        return out
    cur = await conn.execute(
        "SELECT a.meter_id, a.id, a.kind, a.start_ts, a.end_ts, a.evidence,"
        " a.resolved_at IS NOT NULL"
        " FROM unnest(%s::text[], %s::timestamptz[]) AS w(meter_id, since)"
        " JOIN alert_data a ON a.meter_id = w.meter_id"
        " WHERE a.withdrawn_at IS NULL AND (a.end_ts IS NULL OR a.end_ts >= w.since)"
        " AND a.kind = ANY(%s) ORDER BY a.id FOR UPDATE OF a",
        (list(since), list(since.values()), _RULE_KINDS),
    )
    for r in await cur.fetchall():
        out[r[0]].append(StoredAlert(r[1], AlertKind(r[2]), r[3], r[4], r[5] or {}, r[6]))
    return out


RawSample = tuple[datetime, float, bool, datetime | None]
RawEvent = tuple[datetime, str, datetime | None]


@dataclass(frozen=True, slots=True)
class RawData:
    """One meter's loaded rows as plain tuples: cheap to fetch and to hand to a worker process."""

    channels: dict[str, list[RawSample]]
    events: list[RawEvent]
    resolutions: dict[AlertKind, list[datetime]]

    def meter_data(self) -> MeterData:
        return MeterData(
            {c: [Sample(*row) for row in rows] for c, rows in self.channels.items()},
            [EventRecord(*row) for row in self.events],
        )


async def load_data(
    conn: AsyncConnection[Any], since: Mapping[str, datetime]
) -> dict[str, RawData]:
    """Per meter: its readings on the rule channels with ``ts >= since`` (plus the last
    register reading before, so a drop or a gap across the edge is seen), its events, and when
    operators resolved its alerts."""
    meters, starts = list(since), list(since.values())
    channels: dict[str, dict[str, list[RawSample]]] = {m: {} for m in meters}
    events: dict[str, list[RawEvent]] = {m: [] for m in meters}
    resolved: dict[str, dict[AlertKind, list[datetime]]] = {m: {} for m in meters}
    if not meters:
        return {}
    cur = await conn.execute(
        "SELECT w.meter_id, k.channel, p.ts, p.value, p.quality = 'measured', p.received_at"
        " FROM unnest(%s::text[], %s::timestamptz[]) AS w(meter_id, since)"
        " CROSS JOIN unnest(%s::text[]) AS k(channel)"
        " CROSS JOIN LATERAL ("
        "   SELECT ts, value, quality, received_at FROM reading_data r"
        "   WHERE r.meter_id = w.meter_id AND r.channel = k.channel AND r.ts < w.since"
        "   ORDER BY r.ts DESC LIMIT 1) p",
        (meters, starts, list(CUMULATIVE)),
    )
    for meter_id, channel, ts, value, measured, received in await cur.fetchall():
        channels[meter_id][channel] = [(ts, value, measured, received)]
    cur = await conn.execute(
        "SELECT w.meter_id, r.channel, r.ts, r.value, r.quality = 'measured', r.received_at"
        " FROM unnest(%s::text[], %s::timestamptz[]) AS w(meter_id, since)"
        " CROSS JOIN LATERAL ("  # one index range scan per meter, never a scan of the table
        "   SELECT channel, ts, value, quality, received_at FROM reading_data"
        "   WHERE meter_id = w.meter_id AND channel = ANY(%s) AND ts >= w.since) r"
        " ORDER BY w.meter_id, r.channel, r.ts",
        (meters, starts, list(RULE_CHANNELS)),
    )
    for meter_id, channel, ts, value, measured, received in await cur.fetchall():
        channels[meter_id].setdefault(channel, []).append((ts, value, measured, received))
    cur = await conn.execute(
        "SELECT w.meter_id, e.ts, e.type, e.received_at"
        " FROM unnest(%s::text[], %s::timestamptz[]) AS w(meter_id, since)"
        " CROSS JOIN LATERAL (SELECT ts, type, received_at FROM meter_events"
        "   WHERE meter_id = w.meter_id AND ts >= w.since) e"
        " ORDER BY w.meter_id, e.ts, e.type",
        (meters, starts),
    )
    for meter_id, ts, kind, received in await cur.fetchall():
        events[meter_id].append((ts, kind, received))
    cur = await conn.execute(
        "SELECT a.meter_id, a.kind, a.resolved_at"
        " FROM unnest(%s::text[], %s::timestamptz[]) AS w(meter_id, since)"
        " JOIN alert_data a ON a.meter_id = w.meter_id"
        " WHERE a.withdrawn_at IS NULL AND a.resolved_at >= w.since AND a.kind = ANY(%s)"
        " ORDER BY a.resolved_at",
        (meters, starts, _RULE_KINDS),
    )
    for meter_id, kind, at in await cur.fetchall():
        resolved[meter_id].setdefault(AlertKind(kind), []).append(at)
    return {m: RawData(channels[m], events[m], resolved[m]) for m in meters}


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
