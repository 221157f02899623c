"""Billing endpoints: person's reads, the review list, the billing export and corrections.

``POST /meters/{id}/reads`` needs a technician (or higher); the review list, the plausibility
limits, the export and the corrections report need an operator. Files are streamed as they
are produced, on the downloads' own connections (:mod:`gateway.http.exports`); the other
endpoints take theirs with the API's short wait (:mod:`gateway.http.db`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from gateway.billing.core import CLOCK_SKEW, BillingPolicy, ReadSource, read_time_problem
from gateway.billing.corrections import correction_bytes
from gateway.billing.export import export_bytes
from gateway.billing.formats import MEDIA_TYPES
from gateway.billing.limits import MAX_LIMIT, SIZE_PATTERN, Limit, list_limits, set_limit
from gateway.billing.period import Period
from gateway.billing.reads import ReadSubmission, decide_review, review_list, submit_read
from gateway.http.db import DbConn
from gateway.http.exports import ExportDownload
from gateway.http.models import ApiModel
from gateway.http.security import Principal, Role, request_id_of, require, source_of

__all__ = ["router"]

router = APIRouter(tags=["billing"])

MeterId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
_PERIOD = r"^(19[7-9]\d|2\d{3})-(0[1-9]|1[0-2])$"
PeriodText = Annotated[str, Query(pattern=_PERIOD, examples=["2026-11"])]
Technician = Annotated[Principal, Depends(require(Role.TECHNICIAN))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]


async def get_policy(request: Request) -> BillingPolicy:
    policy: BillingPolicy = request.app.state.billing_policy
    return policy


PolicyDep = Annotated[BillingPolicy, Depends(get_policy)]


class ReadIn(ApiModel):
    """A register read taken by a person."""

    value: float = Field(ge=0, le=1e9, description="register value, in the register's unit")
    read_at: AwareDatetime = Field(description="when the register showed the value (with offset)")
    source: Literal["meter_reader", "technician", "customer"]
    register_: str | None = Field(
        None,
        alias="register",
        pattern=r"^[0-9A-Za-z.:_-]{1,32}$",
        description="OBIS register; default: the meter's main register",
    )
    reader: str | None = Field(None, max_length=200, description="default: the caller's name")
    photo_ref: str | None = Field(None, max_length=500)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value

    @field_validator("read_at")
    @classmethod
    def _read_time(cls, value: datetime) -> datetime:
        if value > datetime.now(UTC) + CLOCK_SKEW:
            raise ValueError("read_at is in the future")
        if (problem := read_time_problem(value)) is not None:
            raise ValueError(f"read_at {problem}")
        return value


class ReadOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: int
    meter_id: str
    register_: str = Field(alias="register")
    read_at: datetime
    value: float
    source: str
    reader: str | None
    photo_ref: str | None
    status: Literal["accepted", "rejected"]
    reason: str | None
    detail: str | None
    origin: str
    received_at: datetime
    reviewed_by: str | None
    reviewed_at: datetime | None


def _out(read: Any) -> ReadOut:
    return ReadOut(
        id=read.id,
        meter_id=read.meter_id,
        register_=read.channel,
        read_at=read.ts,
        value=read.value,
        source=read.source,
        reader=read.reader,
        photo_ref=read.photo_ref,
        status=read.status,
        reason=read.reason,
        detail=read.detail,
        origin=read.origin,
        received_at=read.received_at,
        reviewed_by=read.reviewed_by,
        reviewed_at=read.reviewed_at,
    )


@router.post(
    "/meters/{meter_id}/reads",
    response_model=ReadOut,
    status_code=201,
    responses={200: {"description": "the same read was already stored", "model": ReadOut}},
)
async def post_read(
    *,
    meter_id: MeterId,
    body: ReadIn,
    response: Response,
    principal: Technician,
    conn: DbConn,
    policy: PolicyDep,
) -> ReadOut:
    """Store a read after checking it against the meter's history.

    A read that fails the check is stored as ``rejected`` with its reason and goes to the
    review list; it is not used for billing. Sending the same read again returns it (200).
    """
    sub = ReadSubmission(
        meter_id=meter_id,
        ts=body.read_at,
        value=body.value,
        source=ReadSource(body.source),
        channel=body.register_,
        reader=body.reader or principal.name,
        photo_ref=body.photo_ref,
        origin="api",
    )
    result = await submit_read(conn, sub, actor=principal.name, policy=policy)
    if not result.created:
        response.status_code = 200
    return _out(result.read)


@router.get("/billing/reviews", response_model=list[ReadOut])
async def get_reviews(
    principal: Operator,
    conn: DbConn,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> list[ReadOut]:
    """Rejected reads waiting for a decision, oldest first; page with ``after`` = last id."""
    del principal
    return [_out(r) for r in await review_list(conn, limit=limit, after=after)]


class ReviewIn(ApiModel):
    decision: Literal["accept", "reject"]


@router.post("/billing/reviews/{read_id}", response_model=ReadOut)
async def post_review(
    *,
    read_id: Annotated[int, Path(ge=1)],
    body: ReviewIn,
    principal: Operator,
    conn: DbConn,
    policy: PolicyDep,
) -> ReadOut:
    """Decide on a rejected read: ``accept`` it for billing or confirm the rejection."""
    read = await decide_review(
        conn, read_id, accept=body.decision == "accept", actor=principal.name, policy=policy
    )
    return _out(read)


class LimitIn(ApiModel):
    """A plausibility limit: the most consumption per day (kWh or m3) a read may imply."""

    model_config = ConfigDict(extra="forbid")

    max_per_day: float = Field(gt=0, le=MAX_LIMIT, examples=[250])

    @field_validator("max_per_day")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("max_per_day must be a finite number")
        return value


class LimitOut(BaseModel):
    utility: Literal["electricity", "water"]
    size: str
    max_per_day: float
    unit: str


def _limit(limit: Limit) -> LimitOut:
    return LimitOut(
        utility=limit.utility,
        size=limit.size,
        max_per_day=limit.max_per_day,
        unit=limit.unit,
    )


@router.get("/billing/limits", response_model=list[LimitOut])
async def get_limits(principal: Operator, conn: DbConn) -> list[LimitOut]:
    """Plausibility limits of person's reads, per utility and meter size (``*``: default)."""
    del principal
    return [_limit(limit) for limit in await list_limits(conn)]


@router.put("/billing/limits/{utility}/{size}", response_model=LimitOut)
async def put_limit(
    *,
    utility: Literal["electricity", "water"],
    size: Annotated[str, Path(pattern=SIZE_PATTERN, examples=["*", "20mm"])],
    body: LimitIn,
    principal: Operator,
    conn: DbConn,
    request: Request,
) -> LimitOut:
    """Create or change the limit of ``utility`` meters of ``size`` (``*``: the default for
    meters of unknown size). Reads already decided are not re-checked. Audited."""
    request.state.audited = True  # the record below names the limit and the value it replaced
    limit, _previous = await set_limit(
        conn,
        utility,
        size,
        body.max_per_day,
        actor=principal.name,
        source=source_of(request),
        request_id=request_id_of(request),
    )
    return _limit(limit)


def _download(chunks: AsyncIterator[bytes], name: str, file_format: str) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type=MEDIA_TYPES[file_format],
        headers={"Content-Disposition": f'attachment; filename="{name}.{file_format}"'},
    )


@router.get(
    "/billing/export",
    response_class=StreamingResponse,
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}},
)
async def get_export(
    *,
    principal: Operator,
    download: ExportDownload,
    policy: PolicyDep,
    period: PeriodText,
    utility: Literal["electricity", "water"] | None = None,
    format: Literal["csv", "parquet"] = "csv",
) -> StreamingResponse:
    """The billing export of ``period`` (docs/billing.md), streamed.

    A CSV file ends with its trailer line; a Parquet file with its footer. Downloads have a
    connection budget of their own: beyond it the answer is 503 with ``Retry-After``.
    """
    del principal
    billed = Period.parse(period)
    chunks = export_bytes(download.conn, billed, file_format=format, utility=utility, policy=policy)
    return _download(download.stream(chunks), f"billing-{billed}", format)


@router.get(
    "/billing/corrections",
    response_class=StreamingResponse,
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}},
)
async def get_corrections(
    *,
    principal: Operator,
    download: ExportDownload,
    policy: PolicyDep,
    period: Annotated[str | None, Query(pattern=_PERIOD)] = None,
    since: AwareDatetime | None = None,
    new: bool = False,
    format: Literal["csv", "parquet"] = "csv",
) -> StreamingResponse:
    """Superseded estimates: estimated vs actual consumption per billed period.

    ``new=true``: only the rows no earlier ``new`` download delivered; they count as delivered
    once the whole file has been produced."""
    billed = Period.parse(period) if period else None
    chunks = correction_bytes(
        download.conn,
        file_format=format,
        now=datetime.now(UTC),
        period=billed,
        since=since,
        new=new,
        policy=policy,
        actor=principal.name,
    )
    return _download(download.stream(chunks), f"corrections-{billed or 'all'}", format)
