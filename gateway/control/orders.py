"""Credit-control steps carried out by a command to the meter: disconnect and restrict (orders,
executed in the execution window), reconnect and restore (releases, at once), and the check
that an order still stands right before it is signed.

An order marks the meter ``disconnected`` / ``restricted`` in ``control_meters`` when it is
made, so that a payment arriving before the command went out releases it: a command not yet
signed is then cancelled (the meter was never touched), one signed (perhaps already on its
way) is followed by a reconnect or restore. A release adds the policy's reconnection fee to the
account, once per command, when the meter was seen to carry the order out.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg

from gateway import audit
from gateway.control.commands import finish, order_command
from gateway.control.facts import (
    Account,
    close_action_if_released,
    load_accounts,
    set_meter_state,
)
from gateway.control.lifecycle import CommandState
from gateway.control.policy import Policy
from gateway.control.rules import MeterFacts, MeterState, Step, decide
from gateway.control.store import current_policy
from gateway.control.window import next_window_start
from protocols.commands import CommandAction

__all__ = ["order_lapsed", "order_step", "release"]

Conn = psycopg.AsyncConnection[Any]

_ORDER_ACTIONS = {
    Step.DISCONNECT: (CommandAction.DISCONNECT, MeterState.DISCONNECTED),
    Step.RESTRICT: (CommandAction.RESTRICT, MeterState.RESTRICTED),
}
_STEP_OF = {action: step for step, (action, _) in _ORDER_ACTIONS.items()}


async def order_step(
    conn: Conn,
    *,
    step: Step,
    account: Account,
    meter: MeterFacts,
    policy: Policy,
    actor: str,
    run: tuple[int, int] | None,
    reason: str,
) -> tuple[str, str]:
    """Carry out a command step of a run (in the caller's transaction); (item state, outcome)."""
    account_id = account.facts.account_id
    if step not in _ORDER_ACTIONS:
        return await release(
            conn,
            account_id=account_id,
            meter=meter,
            policy=policy,
            actor=actor,
            run=run,
            cause=reason,
        )
    action, state = _ORDER_ACTIONS[step]
    opens = next_window_start(datetime.now(UTC), policy)
    command_id = await order_command(
        conn,
        meter_id=meter.meter_id,
        action=action,
        origin="credit_control",
        requested_by=actor,
        reason=reason,
        account_id=account_id,
        run=run,
        windowed=True,
        not_before=opens,
    )
    await conn.execute(
        "INSERT INTO control_accounts (account_id, action_started_at, debt_at_action)"
        " SELECT account_id, now(), arrears FROM accounts WHERE account_id = %s"
        " ON CONFLICT (account_id) DO UPDATE SET"
        " action_started_at = coalesce(control_accounts.action_started_at, now()),"
        " debt_at_action = CASE WHEN control_accounts.action_started_at IS NULL"
        "   THEN excluded.debt_at_action ELSE control_accounts.debt_at_action END,"
        " updated_at = now()",
        (account_id,),
    )
    await set_meter_state(conn, meter.meter_id, account_id, state)
    return (
        "ordered",
        f"command {command_id} ({action.value}) executes in the window from {opens.isoformat()}",
    )


async def release(
    conn: Conn,
    *,
    account_id: str,
    meter: MeterFacts,
    policy: Policy,
    actor: str,
    run: tuple[int, int] | None,
    cause: str,
) -> tuple[str, str]:
    """Release a meter under a disconnection or restriction (in the caller's transaction)."""
    cur = await conn.execute(
        "SELECT command_id, state, attempts FROM meter_commands WHERE meter_id = %s"
        " AND origin = 'credit_control' AND action IN ('disconnect', 'restrict')"
        " ORDER BY command_id DESC LIMIT 1 FOR UPDATE",
        (meter.meter_id,),
    )
    last = await cur.fetchone()
    if last is not None and last[1] == CommandState.PLANNED.value and last[2] == 0:
        # Not signed yet (the row lock waits for a pass that is signing it): never sent.
        await finish(
            conn,
            int(last[0]),
            CommandState.CANCELLED,
            f"released before it was sent: {cause}",
            actor=actor,
        )
        await set_meter_state(conn, meter.meter_id, account_id, MeterState.NORMAL)
        await close_action_if_released(conn, account_id)
        return "done", f"order {last[0]} cancelled before it was sent"
    # The fee is due for an order the meter was seen to carry out, not for one that failed
    # or is still on its way (the reconnect below supersedes it).
    fee_due = last is not None and last[1] == CommandState.CONFIRMED.value
    cur = await conn.execute(
        "SELECT utility, reconnect_mode FROM meters WHERE meter_id = %s", (meter.meter_id,)
    )
    row = await cur.fetchone()
    utility, mode = (row[0], row[1]) if row else (meter.utility, "remote")
    if utility == "water":
        action = CommandAction.RESTORE
    else:
        action = CommandAction.ARM_RECONNECT if mode == "arm" else CommandAction.RECONNECT
    command_id = await order_command(
        conn,
        meter_id=meter.meter_id,
        action=action,
        origin="credit_control",
        requested_by=actor,
        reason=cause,
        account_id=account_id,
        run=run,
    )
    fee = policy.reconnection_fee
    if fee > 0 and fee_due:
        await _charge_fee(conn, account_id, fee, command_id, actor=actor)
    await set_meter_state(conn, meter.meter_id, account_id, MeterState.NORMAL)
    await close_action_if_released(conn, account_id)
    return "ordered", f"command {command_id} ({action.value}) sent at once"


async def _charge_fee(
    conn: Conn, account_id: str, fee: Decimal, command_id: int, *, actor: str
) -> None:
    cur = await conn.execute(
        "INSERT INTO account_charges (account_id, kind, amount, command_id)"
        " VALUES (%s, 'reconnection_fee', %s, %s) ON CONFLICT (command_id) DO NOTHING",
        (account_id, fee, command_id),
    )
    if cur.rowcount != 1:
        return
    await conn.execute(
        "UPDATE accounts SET arrears_since = CASE WHEN arrears = 0 THEN current_date"
        " ELSE arrears_since END, arrears = arrears + %s, updated_at = now()"
        " WHERE account_id = %s",
        (fee, account_id),
    )
    await audit.record(
        conn,
        actor=actor,
        action="control.fee",
        object=f"account:{account_id}",
        outcome="charged",
        detail={"kind": "reconnection_fee", "amount": str(fee), "command_id": command_id},
    )


async def order_lapsed(conn: Conn, command_id: int) -> str | None:
    """None while a credit-control order still stands on today's facts, else why not.

    A lapsed order puts the meter back to ``normal`` in the credit-control process; the caller
    cancels the command. Releases (reconnect, restore) always stand.
    """
    cur = await conn.execute(
        "SELECT meter_id, action, account_id FROM meter_commands WHERE command_id = %s",
        (command_id,),
    )
    row = await cur.fetchone()
    if row is None or row[2] is None or CommandAction(row[1]) not in _STEP_OF:
        return None
    meter_id, action, account_id = str(row[0]), CommandAction(row[1]), str(row[2])
    _, policy = await current_policy(conn)
    today = datetime.now(UTC).astimezone(policy.zone).date()
    loaded = await load_accounts(conn, [account_id])
    meter = next((m for a in loaded for m in a.meters if m.meter_id == meter_id), None)
    if not loaded or meter is None:
        why = "the meter no longer belongs to an account in arrears"
    else:
        decision = decide(loaded[0].facts, replace(meter, state=MeterState.NORMAL), policy, today)
        if decision.step is _STEP_OF[action]:
            return None
        why = f"{decision.step.value} ({'; '.join(decision.reasons)})"
    await set_meter_state(conn, meter_id, account_id, MeterState.NORMAL)
    await close_action_if_released(conn, account_id)
    return f"at execution the order no longer stands: {why}"
