"""Alert endpoints: list, per meter, acknowledge, resolve, and the technician's work list.

Every route needs a ``technician`` (or higher) credential; acknowledging and resolving are
audited. Times are RFC 3339; ``start``/``end`` are data time (see docs/detection.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from gateway.detection import queries
from gateway.detection.model import WorkListKind
from gateway.http.db import DbConn
from gateway.http.models import ApiModel, StorableText
from gateway.http.security import Principal, Role, require

__all__ = ["router"]

router = APIRouter(tags=["alerts"])

Technician = Annotated[Principal, Depends(require(Role.TECHNICIAN))]
MeterId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class AlertOut(BaseModel):
    id: int
    meter_id: str
    kind: WorkListKind
    state: Literal["open", "closed"]
    start: datetime
    end: datetime | None
    detected_at: datetime
    severity: Literal["info", "warning", "critical"]
    evidence: dict[str, Any]
    acknowledged_by: str | None
    note: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None


class NoteIn(ApiModel):
    note: str = Field(max_length=2000)


class WorkItem(BaseModel):
    meter_id: str
    severity: Literal["info", "warning", "critical"]
    since: datetime
    """When the oldest reason to visit began (data time), or the last contact."""
    reasons: list[str]
    alerts: list[AlertOut]


class WorkList(BaseModel):
    items: list[WorkItem]


async def _page(
    conn: DbConn,
    where: queries.AlertFilter,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    rows, next_cursor = await queries.list_alerts(conn, where, limit=limit, cursor=cursor)
    return {"items": rows, "next_cursor": next_cursor}


Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[StorableText | None, Query(max_length=200)]
State = Literal["open", "closed", "all"]


@router.get("/alerts", response_model=AlertPage)
async def list_alerts(
    *,
    _: Technician,
    conn: DbConn,
    meter_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
    kind: WorkListKind | None = None,
    state: State = "all",
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Alerts by id; ``since``/``until`` bound their ``start``; pass ``next_cursor`` back as
    ``cursor`` for the next page."""
    where = queries.AlertFilter(meter_id, kind.value if kind else None, state, since, until)
    return await _page(conn, where, limit, cursor)


@router.get("/meters/{meter_id}/alerts", response_model=AlertPage)
async def meter_alerts(
    *,
    meter_id: MeterId,
    _: Technician,
    conn: DbConn,
    kind: WorkListKind | None = None,
    state: State = "all",
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The same as ``GET /alerts`` for one meter."""
    where = queries.AlertFilter(meter_id, kind.value if kind else None, state, since, until)
    return await _page(conn, where, limit, cursor)


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertOut)
async def acknowledge(
    alert_id: AlertId, body: NoteIn, principal: Technician, conn: DbConn, request: Request
) -> dict[str, Any]:
    """Take the alert on (audited); it stays open while the condition lasts."""
    return await queries.acknowledge_alert(
        conn,
        alert_id,
        actor=principal.name,
        note=body.note,
        request_id=request.headers.get("x-request-id"),
    )


@router.post("/alerts/{alert_id}/resolve", response_model=AlertOut)
async def resolve(
    alert_id: AlertId, body: NoteIn, principal: Technician, conn: DbConn, request: Request
) -> dict[str, Any]:
    """Mark the problem dealt with (audited); an alert still open closes now."""
    return await queries.resolve_alert(
        conn,
        alert_id,
        actor=principal.name,
        note=body.note,
        request_id=request.headers.get("x-request-id"),
    )


@router.get("/worklist", response_model=WorkList)
async def get_worklist(
    _: Technician, conn: DbConn, limit: Annotated[int, Query(ge=1, le=5000)] = 500
) -> dict[str, Any]:
    """Meters that need a visit, most severe first, then the oldest."""
    return {"items": await queries.worklist(conn, limit=limit)}
