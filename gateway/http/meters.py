"""Meter registry endpoints: register/update, confirm, look up, list."""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import registry
from gateway.billing.limits import SIZE_PATTERN
from gateway.errors import ValidationError
from gateway.http.custody import CustodyDep
from gateway.http.db import DbConn
from gateway.http.models import ApiModel, text_problem
from gateway.http.security import AccessControl, Role, require
from gateway.keystore.provisioning import write_provisioning_file
from protocols.errors import UsageError
from protocols.modbus import RegisterMap

__all__ = ["router"]

# Reading the registry is a technician's job; changing it is an operator's.
router = APIRouter(
    prefix="/meters", tags=["meters"], dependencies=[Depends(require(Role.TECHNICIAN))]
)
_OPERATOR = [Depends(require(Role.OPERATOR))]

MeterId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


class _MeterFields(BaseModel):
    transport: Literal["mqtt", "modbus"] = "mqtt"
    reporting_interval_s: int = Field(900, ge=1, le=7 * 86400)
    time_zone: str = Field("UTC", max_length=64)
    """IANA zone used for device timestamps written without a UTC offset."""
    verified: bool = True
    modbus_host: str | None = Field(None, max_length=253)
    modbus_port: int | None = Field(None, ge=1, le=65535)
    modbus_unit: int | None = Field(None, ge=0, le=247)
    modbus_word_order: Literal["ABCD", "CDAB", "BADC", "DCBA"] | None = None
    register_map: dict[str, Any] | None = None
    export_allowed: bool = False
    """Registered embedded generation: export on this meter is not reverse flow."""
    register_max: float | None = Field(None, gt=0, le=1e12)
    """Main register capacity (rollover point); unset: the next power of ten."""
    address: str | None = Field(None, max_length=300, examples=["12 Jacaranda Street"])
    """Street address, for the field visit."""
    area: str | None = Field(None, max_length=100, examples=["Hatfield"])
    """Suburb or area: the work list filters by it."""
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    reconnect_mode: Literal["remote", "arm"] = "remote"
    """How a remote reconnect works: ``remote`` closes the relay, ``arm`` only makes it ready
    and the customer presses the meter's button (``arm_reconnect``)."""


class StsIn(ApiModel):
    """A prepaid meter's STS key data (the vending keys themselves live in the key store)."""

    model_config = ConfigDict(extra="forbid")
    sgc: str = Field(pattern=r"^[0-9]{6}$")
    krn: int = Field(ge=1, le=9)
    ti: int = Field(ge=0, le=99)
    key_type: int = Field(ge=0, le=3)
    base_date: Literal[1993, 2014, 2035]
    ea: Literal["07", "11"]
    dkga: Literal["02", "04"]

    @model_validator(mode="after")
    def _algorithms(self) -> StsIn:
        if self.dkga == "02" and self.ea == "11":
            raise ValueError("DKGA02 derives 64-bit keys: it cannot serve EA11 (MISTY1)")
        return self


class MeterIn(ApiModel, _MeterFields):
    utility: Literal["electricity", "water"]
    payment: Literal["prepaid", "postpaid"] = "postpaid"
    sts: StsIn | None = None
    """STS key data for vending; omitted: left as recorded."""
    account: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The customer account; omitted: left as recorded."""
    size: str | None = Field(None, pattern=SIZE_PATTERN, examples=["20mm", "80A-3ph"])
    """Size class for the plausibility limits of manual and customer reads (``GET
    /billing/limits``); ``*``: none, the utility's default limit; omitted: left as recorded."""

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in _zones():
            raise ValueError("unknown time zone (expected an IANA name, e.g. Africa/Johannesburg)")
        return value

    @field_validator("register_map")
    @classmethod
    def _register_map(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                RegisterMap.from_json(value)
            except UsageError as exc:
                raise ValueError(str(exc)[:160]) from None
        return value

    @model_validator(mode="after")
    def _coordinates(self) -> MeterIn:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude go together")
        return self

    @model_validator(mode="after")
    def _modbus_fields(self) -> MeterIn:
        if self.transport == "modbus" and None in (
            self.modbus_host,
            self.modbus_port,
            self.modbus_unit,
        ):
            raise ValueError("a Modbus meter needs modbus_host, modbus_port and modbus_unit")
        return self


class MeterOut(_MeterFields):
    meter_id: str
    utility: Literal["electricity", "water", "unknown"]
    payment: Literal["prepaid", "postpaid", "unknown"]
    created_at: datetime
    last_seen: datetime | None
    last_reading_ts: datetime | None
    online: bool | None
    status: dict[str, Any] | None
    comms_state: Literal["ok", "late", "lost", "never"]
    sts: dict[str, Any] | None = None
    account: str | None = None
    size: str | None = None
    """Size class; null: none (the utility's default plausibility limit)."""


@router.get("", response_model=list[MeterOut])
async def list_meters(
    *,
    conn: DbConn,
    verified: bool | None = None,
    transport: Literal["mqtt", "modbus"] | None = None,
    utility: Literal["electricity", "water", "unknown"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    area: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
) -> list[dict[str, Any]]:
    """Meters by id; pass the last id of a page as ``after`` for the next page.

    ``area`` keeps the meters of one suburb or area. With ``q``: a search by meter number (with
    or without its check digit), account or address (exact matches first; no paging)."""
    if q is not None:
        if text_problem(q) is not None:
            raise ValidationError("q must be storable text")
        return await registry.search_meters(conn, q, area=area, limit=limit)
    return await registry.list_meters(
        conn,
        verified=verified,
        transport=transport,
        utility=utility,
        area=area,
        limit=limit,
        after=after,
    )


@router.get("/{meter_id}", response_model=MeterOut)
async def get_meter(meter_id: MeterId, conn: DbConn) -> dict[str, Any]:
    return await registry.get_meter(conn, meter_id)


@router.put("/{meter_id}", response_model=MeterOut, dependencies=_OPERATOR)
async def put_meter(
    meter_id: MeterId, body: MeterIn, conn: DbConn, custody: CustodyDep, request: Request
) -> dict[str, Any]:
    """Register a meter, or replace what is known about it.

    A meter registered for the first time gets its command key (with a key store configured),
    written to its provisioning file when a provisioning directory is set. A Modbus address
    outside ``GATEWAY_MODBUS_ALLOWED_NETWORKS`` is refused.
    """
    access: AccessControl = request.app.state.access
    if body.transport == "modbus" and body.modbus_host is not None:
        try:
            access.modbus_allowed.check_registration(body.modbus_host)
        except UsageError as exc:
            raise ValidationError(str(exc)) from exc
    spec = registry.MeterSpec(meter_id=meter_id, **body.model_dump())
    keystore = custody.keystore
    async with conn.transaction():
        meter = await registry.upsert_meter(conn, spec)
        new_key = keystore is not None and await keystore.ensure_command_key(conn, meter_id)
    if new_key and keystore is not None and custody.provisioning_dir is not None:
        key = await keystore.export_command_key(conn, meter_id)
        await asyncio.to_thread(write_provisioning_file, custody.provisioning_dir, meter_id, key)
    return meter


@router.post("/{meter_id}/verify", response_model=MeterOut, dependencies=_OPERATOR)
async def verify_meter(meter_id: MeterId, conn: DbConn) -> dict[str, Any]:
    """Confirm an auto-registered meter."""
    return await registry.verify_meter(conn, meter_id)
