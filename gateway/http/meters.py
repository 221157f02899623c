"""Meter registry endpoints: register/update, confirm, look up, list."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field, field_validator, model_validator

from gateway import registry
from gateway.http.deps import ServicesDep
from protocols.errors import UsageError
from protocols.modbus import RegisterMap

__all__ = ["router"]

router = APIRouter(prefix="/meters", tags=["meters"])

MeterId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _MeterFields(BaseModel):
    transport: Literal["mqtt", "modbus"] = "mqtt"
    reporting_interval_s: int = Field(900, ge=1, le=7 * 86400)
    time_zone: str = "UTC"
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


class MeterIn(_MeterFields):
    utility: Literal["electricity", "water"]
    payment: Literal["prepaid", "postpaid"] = "postpaid"

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("register_map")
    @classmethod
    def _register_map(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                RegisterMap.from_json(value)
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return value

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


@router.get("", response_model=list[MeterOut])
async def list_meters(
    *,
    svc: ServicesDep,
    verified: bool | None = None,
    transport: Literal["mqtt", "modbus"] | None = None,
    utility: Literal["electricity", "water", "unknown"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
) -> list[dict[str, Any]]:
    """Meters by id; pass the last id of a page as ``after`` for the next page."""
    async with svc.pool.connection() as conn:
        return await registry.list_meters(
            conn, verified=verified, transport=transport, utility=utility, limit=limit, after=after
        )


@router.get("/{meter_id}", response_model=MeterOut)
async def get_meter(meter_id: MeterId, svc: ServicesDep) -> dict[str, Any]:
    async with svc.pool.connection() as conn:
        return await registry.get_meter(conn, meter_id)


@router.put("/{meter_id}", response_model=MeterOut)
async def put_meter(meter_id: MeterId, body: MeterIn, svc: ServicesDep) -> dict[str, Any]:
    """Register a meter, or replace what is known about it."""
    spec = registry.MeterSpec(meter_id=meter_id, **body.model_dump())
    async with svc.pool.connection() as conn:
        return await registry.upsert_meter(conn, spec)


@router.post("/{meter_id}/verify", response_model=MeterOut)
async def verify_meter(meter_id: MeterId, svc: ServicesDep) -> dict[str, Any]:
    """Confirm an auto-registered meter."""
    async with svc.pool.connection() as conn:
        return await registry.verify_meter(conn, meter_id)
