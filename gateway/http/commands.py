"""One command to one meter, by a technician or an operator (``POST /meters/{id}/commands``),
and a meter's command history (``GET /meters/{id}/commands``).

A command sent here is signed, published, confirmed from the meter's own state and audited
exactly like a credit-control order (:mod:`gateway.control.dispatch`); it is not subject to the
execution window. Technicians may read a meter's state and reconnect or restore it; cutting or
restricting a supply (``disconnect``, ``restrict``, ``close_valve``) needs an operator, is
refused while execution is halted, never closes the valve of an indigent account, and cuts an
essential account (medical or life-support supply, hospitals, schools) only when the operator
says so explicitly (``override_essential``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query
from pydantic import Field

from gateway.control.commands import get_command, list_commands, order_command
from gateway.control.execution import halted
from gateway.control.rules import AccountFacts, is_indigent
from gateway.errors import ConflictError, ForbiddenError
from gateway.http.db import DbConn
from gateway.http.models import ApiModel, StorableText
from gateway.http.security import Principal, Role, require
from protocols.commands import CommandAction

__all__ = ["router"]

router = APIRouter(tags=["meter commands"])

MeterId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Technician = Annotated[Principal, Depends(require(Role.TECHNICIAN))]
_CUTS: Final = frozenset(
    {CommandAction.DISCONNECT, CommandAction.RESTRICT, CommandAction.CLOSE_VALVE}
)


class CommandIn(ApiModel):
    action: CommandAction = Field(description="what the meter is to do (docs/protocol.md §7)")
    reason: StorableText = Field(default="", max_length=500, description="why, for the audit")
    override_essential: bool = Field(
        default=False,
        description="cut or restrict the supply of an essential account all the same",
    )


class MessageOut(ApiModel):
    message_id: str
    action: str
    issued_at: Any
    expires_at: Any
    published_at: Any
    publishes: int
    reply_result: str | None
    reply_reason: str | None
    replied_at: Any


class CommandOut(ApiModel):
    command_id: int
    meter_id: str
    action: str
    state: str
    origin: str
    requested_by: str
    reason: str
    outcome: str
    account_id: str | None
    run_id: int | None
    windowed: bool
    not_before: Any
    attempts: int
    probes: int
    reissues: int
    created_at: Any
    sent_at: Any
    acknowledged_at: Any
    confirmed_at: Any
    finished_at: Any
    confirmed_state: dict[str, Any] | None
    messages: list[MessageOut]


class CommandsOut(ApiModel):
    meter_id: str
    commands: list[CommandOut]


async def _check_cut(conn: DbConn, meter_id: str, body: CommandIn, who: Principal) -> None:
    """Refuse a cut (disconnect, restrict, close_valve) that the by-law or the operators' halt
    does not allow; reconnecting, restoring and reading state are never refused here."""
    if body.action not in _CUTS:
        return
    if not who.has(Role.OPERATOR):
        raise ForbiddenError("cutting or restricting a supply needs an operator")
    if await halted(conn):
        raise ConflictError("execution is halted: no supply is cut until the halt is lifted")
    cur = await conn.execute(
        "SELECT a.account_id, a.essential, a.indigent_from, a.indigent_to, current_date"
        " FROM meter_vending v JOIN accounts a USING (account_id) WHERE v.meter_id = %s",
        (meter_id,),
    )
    account = await cur.fetchone()
    if account is None:
        return
    account_id, essential, indigent_from, indigent_to, today = account
    facts = AccountFacts(
        str(account_id), Decimal(0), indigent_from=indigent_from, indigent_to=indigent_to
    )
    if body.action is CommandAction.CLOSE_VALVE and is_indigent(facts, today):
        raise ConflictError("the valve of an indigent account is never closed: restrict it")
    if essential and not body.override_essential:
        raise ConflictError(
            f"account {account_id} is essential supply: set override_essential to go ahead"
        )


@router.post("/meters/{meter_id}/commands", status_code=202, response_model=CommandOut)
async def post_command(
    meter_id: MeterId, body: CommandIn, who: Technician, conn: DbConn
) -> dict[str, Any]:
    """Send one command to a meter: signed, published and confirmed from the meter's state.

    202: the command is planned; follow it with ``GET /meters/{id}/commands``.
    """
    async with conn.transaction():
        await _check_cut(conn, meter_id, body, who)
        command_id = await order_command(
            conn,
            meter_id=meter_id,
            action=body.action,
            origin="manual",
            requested_by=who.name,
            reason=body.reason,
        )
    return await get_command(conn, command_id)


@router.get("/meters/{meter_id}/commands", response_model=CommandsOut)
async def get_commands(
    meter_id: MeterId,
    who: Technician,
    conn: DbConn,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """A meter's commands, newest first, each with its messages and the meter's replies."""
    del who
    return {"meter_id": meter_id, "commands": await list_commands(conn, meter_id, limit=limit)}
