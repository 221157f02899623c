"""Credit-control runs: plan (what would be done, per account and meter, with reasons and the
legal checks), and read runs and the review list back.

Planning stores the run and its items; nothing happens until an operator approves it
(:mod:`gateway.control.execution`). A plan that would order more than the policy's share of the
fleet is refused unless the operator raises the limit for that run. Items that disconnect or
restrict say from when the execution window lets them go.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway import audit
from gateway.control.facts import NO_METER, Account, load_accounts
from gateway.control.policy import Policy
from gateway.control.rules import ORDERS, Decision, Step, decide
from gateway.control.store import current_policy
from gateway.control.window import next_window_start
from gateway.errors import ConflictError, NotFoundError, ValidationError

__all__ = ["get_run", "plan_run", "review_list"]

Conn = psycopg.AsyncConnection[Any]

_NOTICES = frozenset({Step.NOTICE, Step.FINAL_NOTICE})
# Steps that wait for the execution window; reconnections and restorations go at once.
_WINDOWED = frozenset({Step.DISCONNECT, Step.RESTRICT})


def _plan(accounts: Sequence[Account], policy: Policy, today: date) -> list[Decision]:
    """Account-level notices first, then one item per meter that gets an order, a release or
    a place on the review list."""
    out: list[Decision] = []
    for account in accounts:
        decisions = [decide(account.facts, m, policy, today) for m in account.meters] or [
            decide(account.facts, NO_METER, policy, today)
        ]
        notice = next((d for d in decisions if d.step in _NOTICES), None)
        if notice is not None and not account.notice_pending:
            out.append(
                Decision(
                    account.facts.account_id,
                    "",
                    notice.step,
                    notice.reasons,
                    notice.checks,
                    notice.ground,
                )
            )
        out.extend(
            d
            for d in decisions
            if d.meter_id and d.step not in _NOTICES and d.step is not Step.NONE
        )
    return out


def _checks_json(decision: Decision) -> list[dict[str, Any]]:
    return [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.checks]


async def plan_run(
    conn: Conn,
    *,
    actor: str,
    as_of: date,
    now: datetime,
    account_ids: Sequence[str] | None = None,
    fleet_share_limit: Decimal | None = None,
) -> dict[str, Any]:
    """Plan and store a run; refuse it when it orders more than the allowed fleet share."""
    async with conn.transaction():
        version, policy = await current_policy(conn)
        limit = policy.fleet_share_limit if fleet_share_limit is None else fleet_share_limit
        if not Decimal(0) <= limit <= Decimal(100):
            raise ValidationError("fleet_share_limit is a percentage 0-100")
        decisions = _plan(await load_accounts(conn, account_ids), policy, as_of)
        cur = await conn.execute(
            "SELECT count(*) FROM meters WHERE utility IN ('electricity', 'water')"
        )
        got = await cur.fetchone()
        fleet = int(got[0]) if got else 0
        orders = sum(1 for d in decisions if d.step in ORDERS)
        if orders and orders * 100 > limit * fleet:
            share = Decimal(orders * 100) / max(fleet, 1)
            raise ConflictError(
                f"the run would order {orders} of {fleet} meters ({share:.1f}%), above the"
                f" limit of {limit}%; raise fleet_share_limit for this run to go ahead"
            )
        cur = await conn.execute(
            "INSERT INTO control_runs (policy_version, as_of, fleet_share_limit, fleet_meters,"
            " planned_by) VALUES (%s, %s, %s, %s, %s) RETURNING run_id",
            (version, as_of, limit, fleet, actor),
        )
        got = await cur.fetchone()
        assert got is not None
        run_id = int(got[0])
        opens = next_window_start(now, policy)
        async with conn.cursor() as copy_cur:
            await copy_cur.executemany(
                "INSERT INTO control_run_items (run_id, item_no, account_id, meter_id, step,"
                " reasons, checks, ground) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        run_id,
                        n,
                        d.account_id,
                        d.meter_id or None,
                        d.step.value,
                        [*d.reasons]
                        + (
                            [f"executes in the window from {opens.isoformat()}"]
                            if d.step in _WINDOWED
                            else []
                        ),
                        Jsonb(_checks_json(d)),
                        d.ground,
                    )
                    for n, d in enumerate(decisions, start=1)
                ],
            )
        await audit.record(
            conn,
            actor=actor,
            action="control.run.plan",
            object=f"control_run:{run_id}",
            outcome="planned",
            detail={
                "items": len(decisions),
                "orders": orders,
                "fleet": fleet,
                "policy_version": version,
                "as_of": str(as_of),
            },
        )
    return await get_run(conn, run_id)


async def get_run(conn: Conn, run_id: int) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM control_runs WHERE run_id = %s", (run_id,))
    run = await cur.fetchone()
    if run is None:
        raise NotFoundError(f"run {run_id} is not known")
    await cur.execute(
        "SELECT item_no, account_id, meter_id, step, reasons, checks, ground, state, outcome,"
        " executed_at FROM control_run_items WHERE run_id = %s ORDER BY item_no",
        (run_id,),
    )
    run["items"] = await cur.fetchall()
    return run


async def review_list(conn: Conn) -> list[dict[str, Any]]:
    """Meters of essential (or unclassifiable) accounts that a run would have ordered: the
    latest approved review item per meter, for a person to decide."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT DISTINCT ON (i.meter_id) i.meter_id, i.account_id, i.run_id, i.reasons,"
        " i.ground, i.executed_at, a.essential_reason FROM control_run_items i"
        " JOIN accounts a USING (account_id)"
        " WHERE i.step = 'review' AND i.state = 'done'"
        " ORDER BY i.meter_id, i.executed_at DESC"
    )
    return await cur.fetchall()
