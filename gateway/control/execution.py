"""Credit-control execution: approve a planned run and carry out its items, release what a
payment or a new arrangement allows, and halt.

Approval executes each item of a run (:mod:`gateway.control.runs`) once, re-deciding it on
fresh facts, so every exclusion is checked again at execution time. While execution is halted
nothing of any run executes.

At approval, notices and final notices are queued for the notifier; prepaid blocks and their
release change the account's vending recovery share at once; essential accounts go on the
review list. Steps that need a command to the meter (disconnect, restrict, reconnect, restore)
become signed commands (:mod:`gateway.control.orders`): the item stays ``ordered`` until its
command is confirmed from the meter's state (``done``) or ends otherwise (``failed``).
Disconnections and restrictions wait for the execution window and are checked once more right
before they are signed; reconnections and restorations go at once.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway import audit
from gateway.control import orders
from gateway.control.facts import (
    NO_METER,
    close_action_if_released,
    load_accounts,
    set_meter_state,
)
from gateway.control.notices import enqueue_notice
from gateway.control.policy import Policy
from gateway.control.rules import RELEASES, MeterState, Step, decide
from gateway.control.runs import get_run
from gateway.control.store import current_policy
from gateway.errors import ConflictError, NotFoundError

__all__ = ["approve_run", "halt_state", "halted", "release_after_change", "set_halt"]

Conn = psycopg.AsyncConnection[Any]

_COMMAND_STEPS = frozenset({Step.DISCONNECT, Step.RESTRICT, Step.RECONNECT, Step.RESTORE})


async def halted(conn: Conn) -> bool:
    """Whether an operator has halted credit-control execution."""
    cur = await conn.execute("SELECT halted FROM control_halt")
    row = await cur.fetchone()
    return bool(row and row[0])


async def halt_state(conn: Conn) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT halted, changed_by, reason, changed_at FROM control_halt")
    row = await cur.fetchone()
    return row or {"halted": False, "changed_by": None, "reason": "", "changed_at": None}


async def set_halt(conn: Conn, *, halted: bool, actor: str, reason: str) -> dict[str, Any]:
    """Halt (or resume) all credit-control execution at once."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO control_halt (halted, changed_by, reason) VALUES (%s, %s, %s)"
            " ON CONFLICT (singleton) DO UPDATE SET halted = excluded.halted,"
            " changed_by = excluded.changed_by, reason = excluded.reason, changed_at = now()",
            (halted, actor, reason),
        )
        await audit.record(
            conn,
            actor=actor,
            action="control.halt",
            object="control:execution",
            outcome="halted" if halted else "resumed",
            detail={"reason": reason},
        )
    return await halt_state(conn)


async def _execute(
    conn: Conn, run_id: int, item: dict[str, Any], *, policy: Policy, today: date, actor: str
) -> tuple[str, str]:
    """Re-decide one item on fresh facts and carry it out; returns (state, outcome)."""
    planned = Step(item["step"])
    loaded = await load_accounts(conn, [item["account_id"]])
    if not loaded:
        return "skipped", "at execution: nothing to act on any more"
    account = loaded[0]
    if item["meter_id"] is None:
        meters = account.meters or (NO_METER,)
        steps = {decide(account.facts, m, policy, today).step for m in meters}
        if planned not in steps:
            return "skipped", f"at execution: {', '.join(sorted(s.value for s in steps))}"
        kind = "notice" if planned is Step.NOTICE else "final_notice"
        await enqueue_notice(
            conn,
            account_id=account.facts.account_id,
            kind=kind,
            amount=max(
                account.facts.arrears
                - (account.facts.dispute_amount if account.facts.dispute_open else 0),
                Decimal(0),
            ),
            run_id=run_id,
            actor=actor,
            days=policy.final_notice_days,
        )
        return "done", f"{kind} queued"
    meter = next((m for m in account.meters if m.meter_id == item["meter_id"]), None)
    if meter is None:
        return "skipped", "at execution: the meter no longer belongs to the account"
    now_decision = decide(account.facts, meter, policy, today)
    if now_decision.step is not planned:
        return (
            "skipped",
            f"at execution: {now_decision.step.value} ({'; '.join(now_decision.reasons)})",
        )
    if planned is Step.REVIEW:
        return "done", "on the review list"
    if planned in _COMMAND_STEPS:
        return await orders.order_step(
            conn,
            step=planned,
            account=account,
            meter=meter,
            policy=policy,
            actor=actor,
            run=(run_id, int(item["item_no"])),
            reason="; ".join(now_decision.reasons),
        )
    account_id = account.facts.account_id
    if planned is Step.BLOCK_VENDING:
        await conn.execute(
            "INSERT INTO control_accounts (account_id, action_started_at, debt_at_action,"
            " share_before_block) SELECT account_id, now(), arrears, debt_recovery_share"
            " FROM accounts WHERE account_id = %s ON CONFLICT (account_id) DO UPDATE SET"
            " action_started_at = coalesce(control_accounts.action_started_at, now()),"
            " debt_at_action = CASE WHEN control_accounts.action_started_at IS NULL"
            "   THEN excluded.debt_at_action ELSE control_accounts.debt_at_action END,"
            " share_before_block = coalesce(control_accounts.share_before_block,"
            "   excluded.share_before_block), updated_at = now()",
            (account_id,),
        )
        await conn.execute(
            "UPDATE accounts SET debt_recovery_share = %s, updated_at = now()"
            " WHERE account_id = %s",
            (policy.prepaid_recovery_share, account_id),
        )
        await set_meter_state(conn, meter.meter_id, account_id, MeterState.BLOCKED)
        return (
            "done",
            f"vending blocked: {policy.prepaid_recovery_share}% of each purchase to arrears",
        )
    # Step.UNBLOCK_VENDING
    await _unblock(conn, meter.meter_id, account_id)
    return "done", "vending unblocked"


async def _unblock(conn: Conn, meter_id: str, account_id: str) -> None:
    await conn.execute(
        "UPDATE accounts a SET debt_recovery_share = coalesce(c.share_before_block, 0),"
        " updated_at = now() FROM control_accounts c"
        " WHERE a.account_id = c.account_id AND a.account_id = %s",
        (account_id,),
    )
    await set_meter_state(conn, meter_id, account_id, MeterState.NORMAL)
    await close_action_if_released(conn, account_id)


async def release_after_change(conn: Conn, account_id: str, *, actor: str, cause: str) -> None:
    """Release what a payment or a new arrangement allows, at once and outside the execution
    window: prepaid vending is unblocked in this transaction; a disconnection or restriction
    not yet sent is cancelled, one already carried out is followed by a reconnect / restore
    command."""
    _, policy = await current_policy(conn)
    today = datetime.now(UTC).astimezone(policy.zone).date()
    for account in await load_accounts(conn, [account_id]):
        for meter in account.meters:
            if meter.state is MeterState.NORMAL:
                continue
            decision = decide(account.facts, meter, policy, today)
            if decision.step is Step.UNBLOCK_VENDING:
                await _unblock(conn, meter.meter_id, account_id)
                outcome, reason = "done", "vending unblocked"
            elif decision.step in RELEASES:
                outcome, reason = await orders.release(
                    conn,
                    account_id=account_id,
                    meter=meter,
                    policy=policy,
                    actor=actor,
                    run=None,
                    cause=cause,
                )
            else:
                continue
            await audit.record(
                conn,
                actor=actor,
                action=f"control.order.{decision.step.value}",
                object=f"account:{account_id}",
                outcome=outcome,
                detail={
                    "meter_id": meter.meter_id,
                    "cause": cause,
                    "reason": reason,
                    "why": list(decision.reasons),
                },
            )


async def approve_run(conn: Conn, run_id: int, *, actor: str, today: date) -> dict[str, Any]:
    """Approve a planned run and execute its items, each re-checked on fresh facts."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT state FROM control_runs WHERE run_id = %s FOR UPDATE", (run_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"run {run_id} is not known")
        if row[0] != "planned":
            raise ConflictError(f"run {run_id} is {row[0]}, not planned")
        if await halted(conn):
            raise ConflictError("credit-control execution is halted")
        _, policy = await current_policy(conn)
        await conn.execute(
            "UPDATE control_runs SET state = 'approved', approved_by = %s, approved_at = now()"
            " WHERE run_id = %s",
            (actor, run_id),
        )
        await audit.record(
            conn,
            actor=actor,
            action="control.run.approve",
            object=f"control_run:{run_id}",
            outcome="approved",
        )
        items = (await get_run(conn, run_id))["items"]
        for item in items:
            state, outcome = await _execute(
                conn, run_id, item, policy=policy, today=today, actor=actor
            )
            await conn.execute(
                "UPDATE control_run_items SET state = %s, outcome = %s, executed_at = now()"
                " WHERE run_id = %s AND item_no = %s",
                (state, outcome, run_id, item["item_no"]),
            )
            await audit.record(
                conn,
                actor=actor,
                action=f"control.order.{item['step']}",
                object=f"account:{item['account_id']}",
                outcome=state,
                detail={
                    "run_id": run_id,
                    "item": item["item_no"],
                    "meter_id": item["meter_id"],
                    "reason": outcome,
                },
            )
    return await get_run(conn, run_id)
