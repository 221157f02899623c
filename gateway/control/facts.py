"""What credit control knows about accounts and their meters, loaded fresh for every
decision (planning, execution, release, and again right before a command is signed), and the
two writes that record where a meter stands in the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from gateway.control.rules import AccountFacts, MeterFacts, MeterState

__all__ = ["NO_METER", "Account", "close_action_if_released", "load_accounts", "set_meter_state"]

Conn = psycopg.AsyncConnection[Any]

NO_METER = MeterFacts("", "unknown", "unknown")


@dataclass(frozen=True, slots=True)
class Account:
    facts: AccountFacts
    meters: tuple[MeterFacts, ...]
    notice_pending: bool


_FACTS_SQL = """
SELECT a.account_id, a.arrears, a.arrears_since, a.dispute_amount, a.dispute_state = 'open',
       a.arrangement_state = 'active', a.indigent_from, a.indigent_to, a.essential,
       a.pays_above_free_allocation, c.notice_served_on, c.final_notice_served_on,
       coalesce(c.debt_at_action, 0),
       coalesce((SELECT sum(p.applied) FROM account_payments p
                 WHERE p.account_id = a.account_id AND c.action_started_at IS NOT NULL
                   AND p.recorded_at >= c.action_started_at), 0),
       EXISTS (SELECT 1 FROM control_notices n WHERE n.account_id = a.account_id
                 AND n.kind IN ('notice', 'final_notice') AND n.served_on IS NULL)
FROM accounts a LEFT JOIN control_accounts c USING (account_id)
WHERE (a.arrears > 0 OR EXISTS (SELECT 1 FROM control_meters m
                                WHERE m.account_id = a.account_id AND m.state <> 'normal'))
  AND (%(ids)s::text[] IS NULL OR a.account_id = ANY(%(ids)s::text[]))
ORDER BY a.account_id
"""

_METERS_SQL = """
SELECT v.account_id, m.meter_id, m.utility, m.payment, coalesce(cm.state, 'normal')
FROM meter_vending v JOIN meters m USING (meter_id)
LEFT JOIN control_meters cm USING (meter_id)
WHERE v.account_id = ANY(%s::text[])
ORDER BY v.account_id, m.meter_id
"""


async def load_accounts(conn: Conn, account_ids: Sequence[str] | None) -> list[Account]:
    cur = await conn.execute(
        _FACTS_SQL, {"ids": None if account_ids is None else list(account_ids)}
    )
    rows = await cur.fetchall()
    facts = {
        r[0]: (
            AccountFacts(
                account_id=r[0],
                arrears=Decimal(r[1]),
                arrears_since=r[2],
                dispute_amount=Decimal(r[3]),
                dispute_open=bool(r[4]),
                arrangement_kept=bool(r[5]),
                indigent_from=r[6],
                indigent_to=r[7],
                essential=bool(r[8]),
                pays_above_free_allocation=bool(r[9]),
                notice_served_on=r[10],
                final_notice_served_on=r[11],
                debt_at_action=Decimal(r[12]),
                paid_since_action=Decimal(r[13]),
            ),
            bool(r[14]),
        )
        for r in rows
    }
    meters: dict[str, list[MeterFacts]] = {k: [] for k in facts}
    cur = await conn.execute(_METERS_SQL, (list(facts),))
    for account_id, meter_id, utility, payment, state in await cur.fetchall():
        meters[account_id].append(MeterFacts(meter_id, utility, payment, MeterState(state)))
    return [Account(f, tuple(meters[k]), pending) for k, (f, pending) in facts.items()]


async def set_meter_state(conn: Conn, meter_id: str, account_id: str, state: MeterState) -> None:
    await conn.execute(
        "INSERT INTO control_meters (meter_id, account_id, state) VALUES (%s, %s, %s)"
        " ON CONFLICT (meter_id) DO UPDATE SET account_id = excluded.account_id,"
        " state = excluded.state, since = now()",
        (meter_id, account_id, state.value),
    )


async def close_action_if_released(conn: Conn, account_id: str) -> None:
    """With no meter of the account under an action any more, the process starts afresh."""
    await conn.execute(
        "UPDATE control_accounts SET action_started_at = NULL, debt_at_action = 0,"
        " share_before_block = NULL, notice_served_on = NULL, final_notice_served_on = NULL,"
        " updated_at = now() WHERE account_id = %s AND NOT EXISTS (SELECT 1 FROM control_meters"
        " WHERE account_id = %s AND state <> 'normal')",
        (account_id, account_id),
    )
