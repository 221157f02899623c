"""The JSON behind the field pages, open to every client with a technician credential.

``GET /meters/{id}/card`` is one meter at a glance (what the meter card shows);
``GET /meters/{id}/readings`` the hourly or daily aggregates of one channel;
``GET /meters/{id}/events`` and ``GET /meters/{id}/tokens`` its history. The pages render
from exactly these functions: they add no private data path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from psycopg import AsyncConnection
from pydantic import BaseModel
from starlette.routing import NoMatchFound

from gateway import registry
from gateway.control.commands import list_commands
from gateway.detection import queries as alert_queries
from gateway.errors import ValidationError
from gateway.http.alerts import AlertOut
from gateway.http.commands import CommandOut
from gateway.http.db import DbConn
from gateway.http.meters import MeterOut
from gateway.http.security import Role, require
from gateway.web import queries
from gateway.web.present import age_in_words, unit_of

__all__ = [
    "COMMANDS_PATH",
    "build_card",
    "commands_available",
    "readings_of",
    "router",
    "schema_variant",
]

router = APIRouter(tags=["field"], dependencies=[Depends(require(Role.TECHNICIAN))])

MeterId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Channel = Annotated[str, Query(pattern=r"^[0-9A-Za-z.:_-]{1,32}$", examples=["1.8.0"])]
COMMANDS_PATH = "/meters/{meter_id}/commands"
COMMANDS_ROUTE = "get_commands"
"""The name of ``GET /meters/{meter_id}/commands`` (:mod:`gateway.http.commands`)."""
MAX_SPAN = {"hour": timedelta(days=93), "day": timedelta(days=3660)}
CARD_COMMANDS = 10


class LatestValue(BaseModel):
    channel: str
    ts: datetime
    value: float
    unit: str
    quality: str


class Comms(BaseModel):
    state: Literal["ok", "late", "lost", "never"]
    online: bool | None
    last_seen: datetime | None
    age_s: float | None
    age: str
    """The data's age in words, e.g. ``12 min ago``."""


class TokenOut(BaseModel):
    token_id: int
    sale_id: int
    kind: str
    token_last4: str
    tenths: int | None
    state: Literal["issued", "delivered", "accepted", "rejected"]
    reason: str | None
    issued_at: datetime
    delivered_at: datetime | None
    result_at: datetime | None


class EventOut(BaseModel):
    ts: datetime
    type: str
    details: dict[str, Any]
    received_at: datetime


class Card(BaseModel):
    meter: MeterOut
    comms: Comms
    relay: str | None
    valve: str | None
    credit: float | None
    credit_unit: str
    open_alerts: list[AlertOut]
    latest: list[LatestValue]
    events: list[EventOut]
    tokens: list[TokenOut]
    commands_available: bool
    """True when this gateway serves ``/meters/{id}/commands`` (credit control)."""
    commands: list[CommandOut]
    """The meter's last commands, newest first (as ``GET /meters/{id}/commands``)."""
    generated_at: datetime


class Bucket(BaseModel):
    bucket: datetime
    min_value: float
    max_value: float
    avg_value: float
    first_value: float
    last_value: float
    samples: int


class Readings(BaseModel):
    meter_id: str
    channel: str
    unit: str
    interval: Literal["hour", "day"]
    since: datetime
    until: datetime
    buckets: list[Bucket]


def commands_available(request: Request) -> bool:
    """Whether the credit-control command endpoint is part of this app (by its route name:
    included routers do not list their routes in ``app.routes``)."""
    try:
        request.app.url_path_for(COMMANDS_ROUTE, meter_id="M")
    except NoMatchFound:
        return False
    return True


def schema_variant(request: Request) -> queries.SchemaVariant:
    variant: queries.SchemaVariant = request.app.state.schema_variant
    return variant


async def build_card(
    conn: AsyncConnection[Any], meter_id: str, *, with_commands: bool, timescale: bool
) -> dict[str, Any]:
    meter = await registry.get_meter(conn, meter_id)
    now = datetime.now(UTC)
    last_seen = meter["last_seen"]
    age_s = (now - last_seen).total_seconds() if last_seen is not None else None
    status = meter["status"] or {}
    latest = [
        {**row, "unit": unit_of(row["channel"], meter["utility"])}
        for row in await queries.latest_per_channel(
            conn, meter_id, last_reading=meter["last_reading_ts"], timescale=timescale
        )
    ]
    alerts, _ = await alert_queries.list_alerts(
        conn, alert_queries.AlertFilter(meter_id, None, "open", None, None), limit=50, cursor=None
    )
    credit = status.get("credit")
    return {
        "meter": meter,
        "comms": {
            "state": meter["comms_state"],
            "online": meter["online"],
            "last_seen": last_seen,
            "age_s": age_s,
            "age": age_in_words(age_s),
        },
        "relay": status.get("relay"),
        "valve": status.get("valve"),
        "credit": float(credit) if isinstance(credit, int | float) else None,
        "credit_unit": unit_of("credit", meter["utility"]),
        "open_alerts": alerts,
        "latest": latest,
        "events": await queries.events(conn, meter_id, limit=20),
        "tokens": await queries.tokens(conn, meter_id, limit=10),
        "commands_available": with_commands,
        "commands": await list_commands(conn, meter_id, limit=CARD_COMMANDS)
        if with_commands
        else [],
        "generated_at": now,
    }


async def readings_of(
    conn: AsyncConnection[Any],
    meter_id: str,
    *,
    channel: str,
    interval: queries.Interval,
    since: datetime | None,
    until: datetime | None,
    timescale: bool,
) -> dict[str, Any]:
    meter = await registry.get_meter(conn, meter_id)
    until = until or datetime.now(UTC)
    if until.tzinfo is None or (since is not None and since.tzinfo is None):
        raise ValidationError("since and until need a UTC offset")
    try:
        since = since or until - (timedelta(days=1) if interval == "hour" else timedelta(days=30))
    except OverflowError as exc:
        raise ValidationError("until is too early") from exc
    if since >= until:
        raise ValidationError("since must be before until")
    if until - since > MAX_SPAN[interval]:
        raise ValidationError(f"at most {MAX_SPAN[interval].days} days of {interval}ly buckets")
    rows = await queries.buckets(
        conn,
        meter_id,
        channel=channel,
        interval=interval,
        since=since,
        until=until,
        timescale=timescale,
    )
    return {
        "meter_id": meter_id,
        "channel": channel,
        "unit": unit_of(channel, meter["utility"]),
        "interval": interval,
        "since": since,
        "until": until,
        "buckets": rows,
    }


@router.get("/meters/{meter_id}/card", response_model=Card)
async def get_card(meter_id: MeterId, conn: DbConn, request: Request) -> dict[str, Any]:
    """One meter at a glance: identity, comms and data age, relay/valve, credit, open alerts,
    the latest value of each channel, recent events, tokens and commands."""
    return await build_card(
        conn,
        meter_id,
        with_commands=commands_available(request),
        timescale=await schema_variant(request).timescale(conn),
    )


@router.get("/meters/{meter_id}/readings", response_model=Readings)
async def get_readings(
    *,
    meter_id: MeterId,
    conn: DbConn,
    request: Request,
    channel: Channel,
    interval: Literal["hour", "day"] = "hour",
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Hourly or daily aggregates of one channel (``since <= bucket < until``; default: the
    last 24 h of hours or 30 days of days). Daily buckets are deployment-time-zone days."""
    return await readings_of(
        conn,
        meter_id,
        channel=channel,
        interval=interval,
        since=since,
        until=until,
        timescale=await schema_variant(request).timescale(conn),
    )


@router.get("/meters/{meter_id}/events", response_model=list[EventOut])
async def get_events(
    meter_id: MeterId, conn: DbConn, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    """The meter's events, newest first."""
    await registry.get_meter(conn, meter_id)
    return await queries.events(conn, meter_id, limit=limit)


@router.get("/meters/{meter_id}/tokens", response_model=list[TokenOut])
async def get_tokens(
    meter_id: MeterId, conn: DbConn, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[dict[str, Any]]:
    """The meter's last tokens with their accepted / rejected state (last four digits only)."""
    await registry.get_meter(conn, meter_id)
    return await queries.tokens(conn, meter_id, limit=limit)
