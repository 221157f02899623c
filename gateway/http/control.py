"""Credit-control API (operator role): the policy, accounts' credit-control terms, arrears,
payments, disputes and arrangements, one record at a time (the bulk files go through
``gateway import``). Every change is audited; ``GET /control/v1/accounts/{id}`` shows the
account's whole credit-control history.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import Field

from gateway.control import accounts, execution, runs
from gateway.control.policy import DEFAULT_POLICY, policy_to_json
from gateway.control.records import parse_account, parse_arrears, parse_payment
from gateway.control.store import current_policy, save_policy
from gateway.http.db import DbConn
from gateway.http.models import ApiModel
from gateway.http.security import Principal, Role, require

__all__ = ["plain", "router"]

router = APIRouter(prefix="/control/v1", tags=["credit control"])

Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
AccountId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
_AMOUNT = r"^[0-9]{1,12}(\.[0-9]{1,2})?$"


def plain(value: Any) -> Any:
    """JSON values with money as exact decimal strings."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


class PolicyOut(ApiModel):
    version: int
    policy: dict[str, Any]


class PolicyIn(ApiModel):
    changes: dict[str, Any] = Field(
        description="policy fields to change; the rest stay as in force",
        json_schema_extra={"examples": [{"prepaid_recovery_share": "100"}]},
    )


class AccountIn(ApiModel):
    customer_class: str = "domestic"
    contact_numbers: list[str] = Field(default_factory=list, max_length=10)
    indigent_from: date | None = None
    indigent_to: date | None = None
    essential: bool = False
    essential_reason: str = Field(default="", max_length=200)
    pays_above_free_allocation: bool = False
    meters: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=100)


class ArrearsIn(ApiModel):
    arrears: Annotated[str, Field(pattern=_AMOUNT)]
    arrears_since: date | None = None
    as_of: date


class PaymentIn(ApiModel):
    reference: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
    account_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    amount: Annotated[str, Field(pattern=_AMOUNT)]
    paid_at: datetime


class DisputeIn(ApiModel):
    amount: Annotated[str, Field(pattern=_AMOUNT)]
    state: Literal["none", "open", "resolved", "rejected"]
    reason: str = Field(default="", max_length=500)


class ArrangementIn(ApiModel):
    state: Literal["none", "active", "broken", "completed"]
    since: date | None = None
    instalment: Annotated[str, Field(pattern=_AMOUNT)] | None = None
    reason: str = Field(default="", max_length=500)


def _text(value: date | None) -> str:
    return value.isoformat() if value else ""


@router.get("/policy", response_model=PolicyOut)
async def get_policy(operator: Operator, conn: DbConn) -> dict[str, Any]:
    """The credit-control policy in force and its version (0: the defaults)."""
    del operator
    version, policy = await current_policy(conn)
    return {"version": version, "policy": policy_to_json(policy)}


@router.get("/policy/defaults", response_model=PolicyOut)
async def get_policy_defaults(operator: Operator) -> dict[str, Any]:
    """The built-in defaults (South African law and Tshwane practice)."""
    del operator
    return {"version": 0, "policy": policy_to_json(DEFAULT_POLICY)}


@router.put("/policy", response_model=PolicyOut)
async def put_policy(body: PolicyIn, operator: Operator, conn: DbConn) -> dict[str, Any]:
    """Store a new policy version: the one in force with ``changes`` applied."""
    version, policy = await save_policy(conn, body.changes, actor=operator.name)
    return {"version": version, "policy": policy_to_json(policy)}


@router.get("/accounts/{account_id}")
async def get_account(account_id: AccountId, operator: Operator, conn: DbConn) -> dict[str, Any]:
    """An account's credit-control terms, meters, payments and audit history."""
    del operator
    return dict(plain(await accounts.account_view(conn, account_id)))


@router.put("/accounts/{account_id}")
async def put_account(
    account_id: AccountId, body: AccountIn, operator: Operator, conn: DbConn
) -> dict[str, Any]:
    """Create or update an account's credit-control terms (and its meters when given)."""
    record = parse_account(
        {
            "account_id": account_id,
            "customer_class": body.customer_class,
            "contact_numbers": ";".join(body.contact_numbers),
            "indigent_from": _text(body.indigent_from),
            "indigent_to": _text(body.indigent_to),
            "essential": str(body.essential),
            "essential_reason": body.essential_reason,
            "pays_above_free_allocation": str(body.pays_above_free_allocation),
            "meters": None if body.meters is None else ";".join(body.meters),
        }
    )
    await accounts.apply_account(conn, record, actor=operator.name, source="api")
    return dict(plain(await accounts.account_view(conn, account_id)))


@router.put("/accounts/{account_id}/arrears")
async def put_arrears(
    account_id: AccountId, body: ArrearsIn, operator: Operator, conn: DbConn
) -> dict[str, Any]:
    """Set the arrears balance as of a date (an older balance than the stored one is stale)."""
    record = parse_arrears(
        {
            "account_id": account_id,
            "arrears": body.arrears,
            "arrears_since": _text(body.arrears_since),
            "as_of": body.as_of.isoformat(),
        }
    )
    outcome = await accounts.apply_arrears(conn, record, actor=operator.name, source="api")
    return {"outcome": outcome, "account": plain(await accounts.account_view(conn, account_id))}


@router.post("/payments")
async def post_payment(body: PaymentIn, operator: Operator, conn: DbConn) -> dict[str, Any]:
    """Record a payment once (by reference); it reduces the account's arrears."""
    record = parse_payment(
        {
            "reference": body.reference,
            "account_id": body.account_id,
            "amount": body.amount,
            "paid_at": body.paid_at.isoformat(),
        },
        DEFAULT_POLICY.zone,
    )
    outcome, left = await accounts.record_payment(conn, record, actor=operator.name, source="api")
    return {"outcome": outcome, "account_id": body.account_id, "arrears": format(left, "f")}


@router.put("/accounts/{account_id}/dispute")
async def put_dispute(
    account_id: AccountId, body: DisputeIn, operator: Operator, conn: DbConn
) -> dict[str, Any]:
    """Record a dispute: an amount in dispute is never the ground for an action."""
    row = await accounts.set_dispute(
        conn,
        account_id,
        amount=Decimal(body.amount),
        state=body.state,
        actor=operator.name,
        reason=body.reason,
    )
    return dict(plain(row))


@router.put("/accounts/{account_id}/arrangement")
async def put_arrangement(
    account_id: AccountId, body: ArrangementIn, operator: Operator, conn: DbConn
) -> dict[str, Any]:
    """Record a payment arrangement; one being kept (``active``) stops the process."""
    row = await accounts.set_arrangement(
        conn,
        account_id,
        state=body.state,
        since=body.since,
        instalment=None if body.instalment is None else Decimal(body.instalment),
        actor=operator.name,
        reason=body.reason,
    )
    return dict(plain(row))


class RunIn(ApiModel):
    as_of: date | None = Field(default=None, description="decision date (default: today, local)")
    accounts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]] | None = Field(
        default=None, max_length=10000, description="only these accounts (default: all)"
    )
    fleet_share_limit: Annotated[str, Field(pattern=r"^[0-9]{1,3}(\.[0-9]{1,2})?$")] | None = Field(
        default=None, description="raise the policy's fleet-share limit for this run"
    )


class HaltIn(ApiModel):
    halted: bool
    reason: str = Field(default="", max_length=500)


RunId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _today() -> date:
    return datetime.now(UTC).astimezone(DEFAULT_POLICY.zone).date()


@router.post("/runs", status_code=201)
async def post_run(body: RunIn, operator: Operator, conn: DbConn) -> dict[str, Any]:
    """Plan a credit-control run: what it would do per account and meter, with the reasons
    and the legal checks. Nothing is sent until the run is approved."""
    run = await runs.plan_run(
        conn,
        actor=operator.name,
        as_of=body.as_of or _today(),
        now=datetime.now(UTC),
        account_ids=body.accounts,
        fleet_share_limit=None
        if body.fleet_share_limit is None
        else Decimal(body.fleet_share_limit),
    )
    return dict(plain(run))


@router.get("/runs/{run_id}")
async def get_run(run_id: RunId, operator: Operator, conn: DbConn) -> dict[str, Any]:
    """A run, its items and what became of each."""
    del operator
    return dict(plain(await runs.get_run(conn, run_id)))


@router.post("/runs/{run_id}/approve")
async def approve_run(run_id: RunId, operator: Operator, conn: DbConn) -> dict[str, Any]:
    """Approve a planned run and execute it; exclusions are checked again for every item."""
    run = await execution.approve_run(conn, run_id, actor=operator.name, today=_today())
    return dict(plain(run))


@router.get("/review")
async def get_review(operator: Operator, conn: DbConn) -> dict[str, Any]:
    """The review list: meters of essential accounts a run would have acted on."""
    del operator
    return {"items": plain(await runs.review_list(conn))}


@router.get("/halt")
async def get_halt(operator: Operator, conn: DbConn) -> dict[str, Any]:
    """Whether credit-control execution is halted."""
    del operator
    return dict(plain(await execution.halt_state(conn)))


@router.put("/halt")
async def put_halt(body: HaltIn, operator: Operator, conn: DbConn) -> dict[str, Any]:
    """Halt (or resume) all credit-control execution at once."""
    state = await execution.set_halt(
        conn, halted=body.halted, actor=operator.name, reason=body.reason
    )
    return dict(plain(state))
