"""Reading and acting on alerts (SQL): listing with a cursor, the work list, acknowledge and
resolve. Withdrawn alerts are never listed (they are read through the ``alerts`` view)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from gateway import audit
from gateway.errors import NotFoundError, ValidationError

__all__ = [
    "AlertFilter",
    "AlertQueryError",
    "acknowledge_alert",
    "decode_cursor",
    "encode_cursor",
    "list_alerts",
    "resolve_alert",
    "worklist",
]

_COLUMNS: Final = (
    'id, meter_id, kind, state, start, "end", detected_at, severity, evidence,'
    " acknowledged_by, note"
)


class AlertQueryError(ValidationError):
    """A query for alerts that cannot be answered as asked (bad cursor, naive time …)."""


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"alert:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "alert":
            raise ValueError(prefix)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AlertQueryError("cursor is not one this API returned") from None


@dataclass(frozen=True, slots=True)
class AlertFilter:
    meter_id: str | None = None
    kind: str | None = None
    state: str = "all"
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name, moment in (("since", self.since), ("until", self.until)):
            if moment is not None and moment.tzinfo is None:
                raise AlertQueryError(f"{name} needs a UTC offset (RFC 3339)")


async def list_alerts(
    conn: AsyncConnection[Any], where: AlertFilter, *, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of alerts by id, and the cursor of the next page (None on the last)."""
    conditions = ["true"]
    params: list[Any] = []
    if where.meter_id is not None:
        conditions.append("meter_id = %s")
        params.append(where.meter_id)
    if where.kind is not None:
        conditions.append("kind = %s")
        params.append(where.kind)
    if where.state != "all":
        conditions.append("state = %s")
        params.append(where.state)
    if where.since is not None:
        conditions.append("start >= %s")
        params.append(where.since)
    if where.until is not None:
        conditions.append("start <= %s")
        params.append(where.until)
    if cursor is not None:
        conditions.append("id > %s")
        params.append(decode_cursor(cursor))
    params.append(limit + 1)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM alerts WHERE {' AND '.join(conditions)} ORDER BY id LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["id"]) if more and rows else None


async def get_alert(conn: AsyncConnection[Any], alert_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = %s", (alert_id,))
        row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"alert {alert_id} does not exist (or was withdrawn)")
    return row


async def _act(
    conn: AsyncConnection[Any],
    alert_id: int,
    *,
    actor: str,
    note: str,
    action: str,
    assignments: str,
    request_id: str | None,
) -> dict[str, Any]:
    async with conn.transaction():
        cur = await conn.execute(
            f"UPDATE alert_data SET {assignments}, note = %(note)s, updated_at = now()"
            " WHERE id = %(id)s AND withdrawn_at IS NULL RETURNING meter_id, kind",
            {"actor": actor, "note": note, "id": alert_id},
        )
        row = await cur.fetchone()
        outcome = "ok" if row is not None else "not_found"
        await audit.record(
            conn,
            actor=actor,
            action=action,
            object=f"alert:{alert_id}",
            outcome=outcome,
            source="http",
            request_id=request_id,
            detail={"note": note} | ({"meter_id": row[0], "kind": row[1]} if row else {}),
        )
    if row is None:
        raise NotFoundError(f"alert {alert_id} does not exist (or was withdrawn)")
    return await get_alert(conn, alert_id)


async def acknowledge_alert(
    conn: AsyncConnection[Any], alert_id: int, *, actor: str, note: str, request_id: str | None
) -> dict[str, Any]:
    """Someone has seen the alert and takes it on; it stays open while the condition lasts."""
    return await _act(
        conn,
        alert_id,
        actor=actor,
        note=note,
        action="alert.acknowledge",
        assignments="acknowledged_by = %(actor)s,"
        " acknowledged_at = coalesce(acknowledged_at, now())",
        request_id=request_id,
    )


async def resolve_alert(
    conn: AsyncConnection[Any], alert_id: int, *, actor: str, note: str, request_id: str | None
) -> dict[str, Any]:
    """The problem was dealt with: the alert closes (at the resolution time if still open)."""
    return await _act(
        conn,
        alert_id,
        actor=actor,
        note=note,
        action="alert.resolve",
        assignments="resolved_by = %(actor)s, resolved_at = coalesce(resolved_at, now()),"
        " acknowledged_by = coalesce(acknowledged_by, %(actor)s),"
        " acknowledged_at = coalesce(acknowledged_at, now())",
        request_id=request_id,
    )


async def worklist(conn: AsyncConnection[Any], *, limit: int) -> list[dict[str, Any]]:
    """Meters that need a visit, most severe first, then oldest: each with its open alerts
    (and its critical alerts nobody has acknowledged yet, such as a register rollback), plus
    meters whose comms are lost (no contact for 72 h) without an alert saying so."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM alerts a WHERE a.state = 'open'"
            "   OR (a.severity = 'critical' AND a.acknowledged_by IS NULL"
            "       AND NOT EXISTS (SELECT 1 FROM alert_data d WHERE d.id = a.id"
            "                       AND d.resolved_at IS NOT NULL))"
            " ORDER BY a.id"
        )
        alerts = await cur.fetchall()
        await cur.execute(
            "SELECT c.meter_id, m.last_seen FROM meter_comms c JOIN meters m USING (meter_id)"
            " WHERE c.comms_state = 'lost'"
        )
        lost = await cur.fetchall()
    rank = {"critical": 0, "warning": 1, "info": 2}
    items: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        item = items.setdefault(
            alert["meter_id"],
            {
                "meter_id": alert["meter_id"],
                "severity": "info",
                "since": alert["start"],
                "reasons": [],
                "alerts": [],
            },
        )
        item["alerts"].append(alert)
        if alert["kind"] not in item["reasons"]:
            item["reasons"].append(alert["kind"])
        if rank[alert["severity"]] < rank[item["severity"]]:
            item["severity"] = alert["severity"]
        item["since"] = min(item["since"], alert["start"])
    for row in lost:
        if row["meter_id"] in items or row["last_seen"] is None:
            continue
        items[row["meter_id"]] = {
            "meter_id": row["meter_id"],
            "severity": "warning",
            "since": row["last_seen"],
            "reasons": ["comms_lost"],
            "alerts": [],
        }
    ordered: Sequence[dict[str, Any]] = sorted(
        items.values(), key=lambda i: (rank[i["severity"]], i["since"], i["meter_id"])
    )
    return list(ordered[:limit])
