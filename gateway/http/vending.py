"""The vending API for third-party vendors: ``/vend/v1/…`` (vendor role).

Every request carries the vendor's own ``request_id``; credit vends, free issues, reversals
and confirmations are idempotent per vendor and ``request_id`` (a retry gets the byte-identical
stored response). A vendor sees only its own transactions. Refusals are 4xx with
``{"error": {"code", "message"}}``; see docs/vending.md. The vending service audits every
operation itself, with the client's address and the request id; the audit middleware adds a
record of its own only for what never reached it (bad input, credentials, rate limits) and
for refusals.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.audit import Origin
from gateway.http.models import ApiModel
from gateway.http.security import Principal, Role, request_id_of, require, source_of
from gateway.vending.errors import VendingUnavailableError
from gateway.vending.service import VendingService

__all__ = ["require_vendor", "router"]

require_vendor = require(Role.VENDOR)
"""The vending API's authentication dependency (one object, so tests may override it)."""

VendorDep = Annotated[Principal, Depends(require_vendor)]

_REQUEST_ID = r"^[A-Za-z0-9_-]{1,64}$"
_METER = r"^([0-9]{11}|[0-9]{13})$"
_AMOUNT = r"^[0-9]{1,9}(\.[0-9]{1,2})?$"
_RECEIPT = r"^[0-9]{1,32}$"

RequestId = Annotated[str, Field(pattern=_REQUEST_ID, description="The vendor's unique id.")]
MeterNo = Annotated[str, Field(pattern=_METER, description="11- or 13-digit meter number.")]
Amount = Annotated[str, Field(pattern=_AMOUNT, description='Decimal rand, e.g. "50.00".')]
ReceiptNo = Annotated[str, Field(pattern=_RECEIPT)]


async def get_vending(request: Request) -> VendingService:
    service: VendingService | None = getattr(request.app.state, "vending", None)
    if service is None:
        raise VendingUnavailableError("vending is not set up on this gateway", retry_after_s=None)
    return service


VendingDep = Annotated[VendingService, Depends(get_vending)]


class _Body(ApiModel):
    model_config = ConfigDict(extra="forbid")


class QuoteIn(_Body):
    meter: MeterNo
    amount: Amount
    request_id: RequestId | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"meter": "01234567890", "amount": "100.00"}]},
    )


class CreditIn(_Body):
    request_id: RequestId
    meter: MeterNo
    amount: Amount

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"request_id": "till7-000123", "meter": "01234567890", "amount": "50.00"}]
        },
    )


class FreeIssueIn(_Body):
    request_id: RequestId
    meter: MeterNo


class ReprintIn(_Body):
    request_id: RequestId
    receipt_no: ReceiptNo | None = None
    meter: MeterNo | None = None
    last: int = Field(1, ge=1, le=20, description="With meter: how many recent receipts.")

    @model_validator(mode="after")
    def _one_selector(self) -> ReprintIn:
        if (self.receipt_no is None) == (self.meter is None):
            raise ValueError("give either receipt_no or meter")
        return self


class AdviceIn(_Body):
    request_id: RequestId
    receipt_no: ReceiptNo

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"request_id": "till7-000124", "receipt_no": "202612010000000042"}]
        },
    )


class TokenOut(BaseModel):
    kind: Literal["key_change", "free_basic", "credit"]
    token: str = Field(pattern=r"^[0-9]{20}$")
    units: str | None
    tid: int


class ChargesOut(BaseModel):
    vat: str
    fixed: str
    debt_recovered: str


class BlockOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: str = Field(alias="from")
    to: str | None
    rate: str
    units: str


_RECEIPT_EXAMPLE: dict[str, Any] = {
    "receipt_no": "202612010000000042",
    "request_id": "till7-000123",
    "meter": "01234567890",
    "utility": "electricity",
    "state": "issued",
    "reprint": False,
    "tokens": [
        {"kind": "free_basic", "token": "53242180413265271846", "units": "100.0", "tid": 6201234},
        {"kind": "credit", "token": "12873408712334560921", "units": "18.5", "tid": 6201235},
    ],
    "amount": "50.00",
    "units": "18.5",
    "charges": {"vat": "6.52", "fixed": "0.00", "debt_recovered": "0.00"},
    "blocks": [{"from": "0", "to": "100", "rate": "2.35", "units": "18.5"}],
    "float_balance": "9950.00",
    "issued_at": "2026-12-01T09:15:02.120Z",
}


class ReceiptOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_RECEIPT_EXAMPLE]})
    receipt_no: str
    request_id: str
    meter: str
    utility: Literal["electricity", "water"]
    state: Literal["issued", "delivered", "accepted", "rejected", "reversed"]
    reprint: bool
    tokens: list[TokenOut]
    amount: str
    units: str
    charges: ChargesOut
    blocks: list[BlockOut]
    float_balance: str
    issued_at: str


class ReprintOut(BaseModel):
    receipts: list[ReceiptOut]


class QuoteOut(BaseModel):
    meter: str
    utility: Literal["electricity", "water"]
    amount: str
    units: str
    charges: ChargesOut
    blocks: list[BlockOut]
    free_basic_due: bool
    free_basic_units: str | None
    key_change_due: bool
    min_amount: str
    max_amount: str
    float_balance: str


class ReversalOut(BaseModel):
    receipt_no: str
    request_id: str
    state: Literal["reversed"]
    amount: str
    float_balance: str
    reversed_at: str


class ConfirmationOut(BaseModel):
    receipt_no: str
    request_id: str
    state: str
    confirmed_at: str


class TransactionOut(BaseModel):
    id: int
    receipt_no: str
    request_id: str
    kind: Literal["sale", "free_issue"]
    meter: str
    amount: str
    units: str
    free_units: str
    state: str
    issued_at: str
    confirmed_at: str | None
    reversed_at: str | None


class TransactionsOut(BaseModel):
    transactions: list[TransactionOut]
    next_after: int | None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (401, 402, 403, 404, 409, 422, 503)
}

router = APIRouter(prefix="/vend/v1", tags=["vending"], responses=_ERRORS)


def _json(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


def _origin(request: Request) -> Origin:
    """Who called, for the vending service's own audit record."""
    return Origin(source_of(request), request_id_of(request))


def _audited(request: Request) -> None:
    """The vending service recorded this request (with its origin), in the same transaction as
    its effect: the middleware need not add a second, less specific record."""
    request.state.audited = True


@router.post("/quote", response_model=QuoteOut)
async def quote(body: QuoteIn, vendor: VendorDep, vending: VendingDep) -> dict[str, Any]:
    """Trial vend: checks the meter (known, prepaid, not blocked) and shows what the amount
    buys now, with the tariff breakdown. No token is issued and nothing is charged."""
    return await vending.quote(vendor.name, body.meter, Decimal(body.amount))


@router.post("/credit", response_model=ReceiptOut)
async def credit(
    request: Request, body: CreditIn, vendor: VendorDep, vending: VendingDep
) -> Response:
    """Credit vend. Tokens come key-change first (when due), then free basic units (when
    due), then the credit token. Retrying with the same ``request_id`` returns the stored
    receipt byte for byte; the same ``request_id`` with another body is ``request_id_reused``."""
    receipt = await vending.credit(
        vendor.name, body.request_id, body.meter, Decimal(body.amount), origin=_origin(request)
    )
    _audited(request)
    return _json(receipt)


@router.post("/free-issue", response_model=ReceiptOut)
async def free_issue(
    request: Request, body: FreeIssueIn, vendor: VendorDep, vending: VendingDep
) -> Response:
    """This month's free basic units for an indigent meter, without a purchase."""
    receipt = await vending.free_issue(
        vendor.name, body.request_id, body.meter, origin=_origin(request)
    )
    _audited(request)
    return _json(receipt)


@router.post("/reprint", response_model=ReprintOut)
async def reprint(
    request: Request, body: ReprintIn, vendor: VendorDep, vending: VendingDep
) -> dict[str, Any]:
    """The original receipt(s) again, by ``receipt_no`` or the meter's ``last`` N sales by
    this vendor, marked ``reprint`` and showing the current state. Never a new token."""
    receipts = await vending.reprint(
        vendor.name,
        receipt_no=body.receipt_no,
        meter_id=body.meter,
        last=1 if body.receipt_no is not None else body.last,
        request_id=body.request_id,
        origin=_origin(request),
    )
    _audited(request)
    return {"receipts": receipts}


@router.post("/reverse", response_model=ReversalOut)
async def reverse(
    request: Request, body: AdviceIn, vendor: VendorDep, vending: VendingDep
) -> Response:
    """Reversal advice: accepted within the reversal window while no meter has accepted the
    sale's tokens and the sale is not confirmed; credits the float back."""
    answer = await vending.reverse(
        vendor.name, body.request_id, body.receipt_no, origin=_origin(request)
    )
    _audited(request)
    return _json(answer)


@router.post("/confirm", response_model=ConfirmationOut)
async def confirm(
    request: Request, body: AdviceIn, vendor: VendorDep, vending: VendingDep
) -> Response:
    """Confirmation advice: the customer got the receipt; the reversal window closes."""
    answer = await vending.confirm(
        vendor.name, body.request_id, body.receipt_no, origin=_origin(request)
    )
    _audited(request)
    return _json(answer)


@router.get("/transactions", response_model=TransactionsOut)
async def transactions(
    vendor: VendorDep,
    vending: VendingDep,
    after: Annotated[int | None, Query(ge=0, description="next_after of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """This vendor's own sales, free issues and reversals, oldest first."""
    return await vending.transactions(vendor.name, after=after, limit=limit)


class VendorFloatOut(BaseModel):
    vendor: str
    float_balance: str


@router.get("/float", response_model=VendorFloatOut)
async def vendor_float(vendor: VendorDep, vending: VendingDep) -> dict[str, str]:
    """This vendor's name as the gateway knows it and its float balance."""
    return {"vendor": vendor.name, "float_balance": await vending.float_balance(vendor.name)}
