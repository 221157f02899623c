"""Vending administration (operator role): accounts, tariffs, vendor floats, supply groups and
vending blocks. Vendors have their own API under ``/vend/v1``.
"""

from __future__ import annotations

import math
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import audit
from gateway.control import accounts as credit_accounts
from gateway.http.control import plain
from gateway.http.db import DbConn
from gateway.http.models import ApiModel
from gateway.http.security import Principal, Role, require
from gateway.http.vending import Amount, VendingDep
from gateway.http.vending import router as vendor_router
from gateway.vending import tariffs as tariff_files
from gateway.vending import vendors
from gateway.vending.errors import (
    InvalidInputError,
    UnknownMeterError,
    VendingError,
    VendingUnavailableError,
)
from gateway.vending.receipt import money
from gateway.vending.service import VendingService
from gateway.vending.store import TARIFF_COLUMNS, tariff_from_row

__all__ = ["install_vending", "router"]

OperatorDep = Annotated[Principal, Depends(require(Role.OPERATOR))]
StaffDep = Annotated[Principal, Depends(require(Role.TECHNICIAN))]

router = APIRouter(tags=["vending administration"])

_ACCOUNT_ID = r"^[A-Za-z0-9_.-]{1,64}$"
_VENDOR = r"^[A-Za-z0-9_.@-]{1,128}$"


class NotFoundAccountError(VendingError):
    code = "unknown_account"
    status = 404


class AccountIn(ApiModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "indigent_from": "2026-01-01",
                    "indigent_to": None,
                    "arrears": "1250.00",
                    "debt_recovery_share": "20",
                }
            ]
        },
    )
    indigent_from: date | None = None
    indigent_to: date | None = None
    arrears: Annotated[str, Field(pattern=r"^[0-9]{1,12}(\.[0-9]{1,2})?$")] = "0"
    debt_recovery_share: Annotated[
        str, Field(pattern=r"^[0-9]{1,3}(\.[0-9]{1,2})?$", description="percent 0-100")
    ] = "0"
    customer_class: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")] = "domestic"

    @model_validator(mode="after")
    def _check(self) -> AccountIn:
        if Decimal(self.debt_recovery_share) > 100:
            raise ValueError("debt_recovery_share is a percentage 0-100")
        if (
            self.indigent_from is not None
            and self.indigent_to is not None
            and self.indigent_to < self.indigent_from
        ):
            raise ValueError("indigent_to is before indigent_from")
        return self


class AccountOut(BaseModel):
    account_id: str
    customer_class: str
    indigent_from: date | None
    indigent_to: date | None
    arrears: str
    debt_recovery_share: str
    credit_control: dict[str, Any] | None = Field(
        default=None,
        description="on GET: the account's whole credit-control history: its terms, meters,"
        " payments, commands to its meters, notices, charges and audit records (as"
        " GET /control/v1/accounts/{id})",
    )


def _account(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "account_id": row[0],
        "customer_class": row[1],
        "indigent_from": row[2],
        "indigent_to": row[3],
        "arrears": money(row[4]),
        "debt_recovery_share": format(Decimal(row[5]).normalize(), "f"),
    }


_ACCOUNT_COLUMNS = (
    "account_id, customer_class, indigent_from, indigent_to, arrears, debt_recovery_share"
)


@router.put("/accounts/{account_id}", response_model=AccountOut)
async def put_account(
    account_id: Annotated[str, Path(pattern=_ACCOUNT_ID)],
    body: AccountIn,
    operator: OperatorDep,
    vending: VendingDep,
    conn: DbConn,
) -> dict[str, Any]:
    """Create or replace an account's vending terms: indigent register dates, arrears and the
    share of each purchase recovered against them."""
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO accounts (account_id, customer_class, indigent_from, indigent_to,"
            " arrears, debt_recovery_share) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (account_id) DO UPDATE SET customer_class = excluded.customer_class,"
            " indigent_from = excluded.indigent_from, indigent_to = excluded.indigent_to,"
            " arrears = excluded.arrears, debt_recovery_share = excluded.debt_recovery_share,"
            f" updated_at = now() RETURNING {_ACCOUNT_COLUMNS}",
            (
                account_id,
                body.customer_class,
                body.indigent_from,
                body.indigent_to,
                Decimal(body.arrears),
                Decimal(body.debt_recovery_share),
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        await audit.record(
            conn,
            actor=operator.name,
            action="account.put",
            object=f"account:{account_id}",
            outcome="stored",
            detail=body.model_dump(mode="json"),
        )
    return _account(row)


@router.get("/accounts/{account_id}", response_model=AccountOut)
async def get_account(
    account_id: Annotated[str, Path(pattern=_ACCOUNT_ID)],
    operator: OperatorDep,
    vending: VendingDep,
    conn: DbConn,
) -> dict[str, Any]:
    del operator
    cur = await conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = %s", (account_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFoundAccountError(f"account {account_id} is not known")
    history = await credit_accounts.account_view(conn, account_id)
    return _account(row) | {"credit_control": plain(history)}


class BlockIn(ApiModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    from_: str = Field(alias="from")
    to: str | None
    rate: str


class TariffIn(ApiModel):
    model_config = ConfigDict(extra="forbid")
    utility: str
    customer_class: str = "domestic"
    effective_from: date
    name: str = ""
    vat_rate: str = "0.15"
    fixed_monthly: str = "0"
    blocks: list[BlockIn]


class TariffsIn(ApiModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tariffs": [
                        {
                            "utility": "electricity",
                            "customer_class": "domestic",
                            "effective_from": "2026-07-01",
                            "vat_rate": "0.15",
                            "fixed_monthly": "0",
                            "blocks": [
                                {"from": "0", "to": "100", "rate": "2.10"},
                                {"from": "100", "to": "400", "rate": "2.65"},
                                {"from": "400", "to": "650", "rate": "3.05"},
                                {"from": "650", "to": None, "rate": "3.41"},
                            ],
                        }
                    ]
                }
            ]
        },
    )
    tariffs: list[TariffIn] = Field(min_length=1)


class LoadOut(BaseModel):
    added: int
    unchanged: int


@router.post("/tariffs", response_model=LoadOut)
async def load_tariffs(
    body: TariffsIn, operator: OperatorDep, vending: VendingDep, conn: DbConn
) -> dict[str, int]:
    """Load tariff versions (as ``gateway tariffs load`` does); versions never change."""
    parsed = tariff_files.tariffs_from_data(body.model_dump(mode="json", by_alias=True))
    result = await tariff_files.store_tariffs(conn, parsed)
    async with conn.transaction():
        await audit.record(
            conn,
            actor=operator.name,
            action="tariffs.load",
            object="tariffs",
            outcome="loaded",
            detail={"added": result.added, "unchanged": result.unchanged},
        )
    return {"added": result.added, "unchanged": result.unchanged}


@router.get("/tariffs")
async def list_tariffs(
    operator: StaffDep,
    vending: VendingDep,
    conn: DbConn,
    utility: Annotated[str | None, Query(pattern=r"^(electricity|water)$")] = None,
) -> list[dict[str, Any]]:
    """Every tariff version, newest first per utility and class."""
    del operator
    cur = await conn.execute(
        f"SELECT {TARIFF_COLUMNS}, name FROM tariffs"
        " WHERE %(u)s::text IS NULL OR utility = %(u)s"
        " ORDER BY utility, customer_class, effective_from DESC",
        {"u": utility},
    )
    rows = await cur.fetchall()
    return [tariff_files.tariff_json(tariff_from_row(row[:-1]), row[-1]) for row in rows]


class TopUpIn(ApiModel):
    model_config = ConfigDict(extra="forbid")
    amount: Amount
    note: str = Field("", max_length=200)


class FloatOut(BaseModel):
    vendor: str
    float_balance: str


@router.post("/vendors/{vendor}/top-ups", response_model=FloatOut)
async def top_up(
    vendor: Annotated[str, Path(pattern=_VENDOR)],
    body: TopUpIn,
    operator: OperatorDep,
    vending: VendingDep,
    conn: DbConn,
) -> dict[str, str]:
    """Credit a vendor's float (a ledger movement)."""
    balance = await vendors.top_up(
        conn, vendor, Decimal(body.amount), actor=operator.name, note=body.note
    )
    return {"vendor": vendor, "float_balance": money(balance)}


@router.get("/vendors/{vendor}/statement", response_class=Response)
async def statement(
    vendor: Annotated[str, Path(pattern=_VENDOR)],
    day: Annotated[date, Query(alias="date")],
    operator: OperatorDep,
    vending: VendingDep,
    conn: DbConn,
) -> Response:
    """The vendor's daily float statement (CSV): opening, each movement, totals, closing."""
    del operator
    text = await vendors.daily_statement(conn, vendor, day, vending.config.zone)
    return Response(text, media_type="text/csv")


class SupplyGroupIn(ApiModel):
    model_config = ConfigDict(extra="forbid")
    krn: int = Field(ge=1, le=9)
    base_date: int = Field(2014)

    @model_validator(mode="after")
    def _base(self) -> SupplyGroupIn:
        if self.base_date not in (2014, 2035):
            raise ValueError("base_date must be 2014 or 2035")
        return self


@router.put("/supply-groups/{sgc}", response_model=SupplyGroupIn)
async def put_supply_group(
    sgc: Annotated[str, Path(pattern=r"^[0-9]{6}$")],
    body: SupplyGroupIn,
    operator: OperatorDep,
    vending: VendingDep,
    conn: DbConn,
) -> SupplyGroupIn:
    """Set a supply group's current key revision: its meters get a key change at their next
    sale (the vending key for the revision must be in the key store)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO supply_groups (sgc, krn, base_date) VALUES (%s, %s, %s)"
            " ON CONFLICT (sgc) DO UPDATE SET krn = excluded.krn,"
            " base_date = excluded.base_date, updated_at = now()",
            (sgc, body.krn, body.base_date),
        )
        await audit.record(
            conn,
            actor=operator.name,
            action="supply_group.put",
            object=f"sgc:{sgc}",
            outcome="stored",
            detail=body.model_dump(),
        )
    return body


class BlockMeterIn(ApiModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(
        max_length=200, description="Told to the customer at the till; null unblocks."
    )


@router.put("/meters/{meter_id}/vending-block")
async def block_meter(
    meter_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
    body: BlockMeterIn,
    operator: OperatorDep,
    vending: VendingDep,
    conn: DbConn,
) -> dict[str, str | None]:
    """Block (or with a null reason unblock) vending to a meter."""
    if body.reason is not None and not body.reason.strip():
        raise InvalidInputError("a block needs a reason the customer can be told")
    async with conn.transaction():
        cur = await conn.execute("SELECT 1 FROM meters WHERE meter_id = %s", (meter_id,))
        if await cur.fetchone() is None:
            raise UnknownMeterError(f"meter {meter_id} is not known")
        await conn.execute(
            "INSERT INTO meter_vending (meter_id, blocked_reason) VALUES (%s, %s)"
            " ON CONFLICT (meter_id) DO UPDATE SET blocked_reason = excluded.blocked_reason,"
            " updated_at = now()",
            (meter_id, body.reason),
        )
        await audit.record(
            conn,
            actor=operator.name,
            action="meter.vending_block",
            object=f"meter:{meter_id}",
            outcome="blocked" if body.reason else "unblocked",
            detail={"reason": body.reason},
        )
    return {"meter": meter_id, "blocked_reason": body.reason}


async def _vending_error(request: Request, exc: Exception) -> JSONResponse:
    del request
    assert isinstance(exc, VendingError)
    # A passing unavailability (busy, the database away for a moment) says when to come back.
    retry_after = exc.retry_after_s if isinstance(exc, VendingUnavailableError) else None
    headers = None if retry_after is None else {"Retry-After": str(max(1, math.ceil(retry_after)))}
    return JSONResponse(
        status_code=exc.status,
        content={"error": {"code": exc.code, "message": exc.message}},
        headers=headers,
    )


def install_vending(app: FastAPI, service: VendingService | None) -> None:
    """Mount the vending and vending-administration routes and map vending errors.

    With ``service`` None the routes answer ``vending_unavailable``.
    """
    app.state.vending = service
    app.add_exception_handler(VendingError, _vending_error)
    app.include_router(vendor_router)
    app.include_router(router)
