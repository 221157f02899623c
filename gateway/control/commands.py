"""Commands to meters in the database: ordering one (in the caller's transaction), ending one
with its consequences, and reading a meter's command history.

:func:`order_command` writes the command ``planned``; the command loop
(:mod:`gateway.control.dispatch`) signs, publishes and follows it. A newer command to the same
meter supersedes any live one (but ``read_state`` supersedes nothing). :func:`finish` applies a
final state with everything that goes with it, in one transaction: the run item's outcome,
the audit record, the work-list alert for a command nobody could confirm or the meter refused,
and, for credit control, the customer's notice.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway import audit
from gateway.control.facts import close_action_if_released, set_meter_state
from gateway.control.lifecycle import LIVE, CommandState, sources
from gateway.control.notices import enqueue_notice
from gateway.control.rules import MeterState
from gateway.errors import ConflictError, NotFoundError, ValidationError
from protocols.commands import CommandAction

__all__ = [
    "ELECTRIC",
    "WATER",
    "applicable",
    "escalate",
    "finish",
    "get_command",
    "list_commands",
    "order_command",
]

Conn = psycopg.AsyncConnection[Any]

ELECTRIC: Final = frozenset(
    {CommandAction.DISCONNECT, CommandAction.RECONNECT, CommandAction.ARM_RECONNECT}
)
WATER: Final = frozenset({CommandAction.RESTRICT, CommandAction.CLOSE_VALVE, CommandAction.RESTORE})
_LIVE_STATES: Final = [s.value for s in LIVE]
_CUTS: Final = frozenset({CommandAction.DISCONNECT, CommandAction.RESTRICT})
_ORDER_LOCK: Final = 0x636D64  # with the meter id's hash: one order at a time per meter

# What a confirmed credit-control command tells the customer.
_NOTICE_ON_CONFIRM: Final = {
    CommandAction.DISCONNECT: "disconnection",
    CommandAction.RESTRICT: "restriction",
    CommandAction.RECONNECT: "reconnection",
    CommandAction.ARM_RECONNECT: "reconnection",
    CommandAction.RESTORE: "reconnection",
}


def applicable(action: CommandAction, utility: str) -> bool:
    """Whether a meter of ``utility`` can carry out ``action``."""
    if action is CommandAction.READ_STATE or utility == "unknown":
        return True
    return action in (ELECTRIC if utility == "electricity" else WATER)


async def order_command(
    conn: Conn,
    *,
    meter_id: str,
    action: CommandAction,
    origin: str,
    requested_by: str,
    reason: str = "",
    account_id: str | None = None,
    run: tuple[int, int] | None = None,
    windowed: bool = False,
    not_before: datetime | None = None,
) -> int:
    """Write a planned command (in the caller's transaction) and return its id.

    NotFoundError for an unknown meter, ConflictError for a meter commands cannot reach (not
    verified, not on MQTT), ValidationError when the meter cannot carry the action out
    (``restrict`` on an electricity meter …).
    """
    # Orders to one meter are serialised on a lock of their own: taking the meter's row lock
    # here would queue the ingest of its readings behind a long run approval (and could
    # deadlock with it, the two taking meter rows in different orders).
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_ORDER_LOCK, meter_id))
    cur = await conn.execute(
        "SELECT utility, verified, transport FROM meters WHERE meter_id = %s", (meter_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"meter {meter_id} is not registered")
    utility, verified, transport = str(row[0]), bool(row[1]), str(row[2])
    if not verified:
        raise ConflictError(f"meter {meter_id} is not verified: no command is sent to it")
    if transport != "mqtt":
        raise ConflictError(f"meter {meter_id} is polled over {transport}: it takes no commands")
    if not applicable(action, utility):
        raise ValidationError(f"a {utility} meter cannot {action.value}")
    cur = await conn.execute(
        "INSERT INTO meter_commands (meter_id, action, origin, requested_by, reason, account_id,"
        " run_id, item_no, windowed, not_before)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, now()))"
        " RETURNING command_id",
        (
            meter_id,
            action.value,
            origin,
            requested_by,
            reason,
            account_id,
            run[0] if run else None,
            run[1] if run else None,
            windowed,
            not_before,
        ),
    )
    got = await cur.fetchone()
    assert got is not None
    command_id = int(got[0])
    if action is not CommandAction.READ_STATE:
        cur = await conn.execute(
            "SELECT command_id FROM meter_commands WHERE meter_id = %s AND command_id <> %s"
            " AND state = ANY(%s) AND action <> 'read_state'",
            (meter_id, command_id, _LIVE_STATES),
        )
        for (older,) in await cur.fetchall():
            await finish(
                conn,
                int(older),
                CommandState.CANCELLED,
                f"superseded by command {command_id}",
                actor=requested_by,
            )
    await audit.record(
        conn,
        actor=requested_by,
        action="command.order",
        object=f"meter:{meter_id}",
        outcome="planned",
        detail={
            "command_id": command_id,
            "action": action.value,
            "origin": origin,
            "reason": reason,
            "run_id": run[0] if run else None,
            "not_before": not_before.isoformat() if not_before else None,
        },
    )
    return command_id


async def finish(
    conn: Conn,
    command_id: int,
    state: CommandState,
    outcome: str,
    *,
    actor: str,
    confirmed_state: dict[str, Any] | None = None,
) -> bool:
    """End a live command in ``state`` with its consequences; False if it had already ended."""
    cur = await conn.execute(
        "UPDATE meter_commands SET state = %s, outcome = %s, finished_at = now(), due_at = NULL,"
        " confirmed_at = CASE WHEN %s = 'confirmed' THEN now() END, confirmed_state = %s"
        " WHERE command_id = %s AND state = ANY(%s)"
        " RETURNING meter_id, action, origin, account_id, run_id, item_no",
        (
            state.value,
            outcome,
            state.value,
            Jsonb(confirmed_state) if confirmed_state is not None else None,
            command_id,
            sources(state),
        ),
    )
    row = await cur.fetchone()
    if row is None:
        return False
    meter_id, action_text, origin, account_id, run_id, item_no = row
    action = CommandAction(action_text)
    if run_id is not None:
        await conn.execute(
            "UPDATE control_run_items SET state = %s, outcome = %s, executed_at = now()"
            " WHERE run_id = %s AND item_no = %s",
            (
                "done" if state is CommandState.CONFIRMED else "failed",
                f"command {command_id} {state.value}: {outcome}",
                run_id,
                item_no,
            ),
        )
    await audit.record(
        conn,
        actor=actor,
        action="command.finish",
        object=f"meter:{meter_id}",
        outcome=state.value,
        detail={"command_id": command_id, "action": action.value, "reason": outcome},
    )
    if (
        origin == "credit_control"
        and account_id is not None
        and action in _CUTS
        and state in (CommandState.REJECTED, CommandState.CANCELLED)
    ):
        # The meter did not carry the order out: it is not under an action any more. (An
        # unconfirmed one stays marked: nobody knows, and a technician goes to look.)
        await set_meter_state(conn, meter_id, account_id, MeterState.NORMAL)
        await close_action_if_released(conn, account_id)
    if state in (CommandState.UNCONFIRMED, CommandState.REJECTED):
        await escalate(
            conn,
            meter_id=meter_id,
            command_id=command_id,
            action=action,
            state=state,
            outcome=outcome,
        )
    elif state is CommandState.CONFIRMED and action is not CommandAction.READ_STATE:
        # A confirmed command ends what an earlier failure put on the work list.
        await conn.execute(
            "UPDATE alert_data SET end_ts = now(), updated_at = now() WHERE meter_id = %s"
            " AND kind IN ('command_unconfirmed', 'command_rejected') AND end_ts IS NULL"
            " AND withdrawn_at IS NULL",
            (meter_id,),
        )
        if origin == "credit_control" and account_id is not None and action in _NOTICE_ON_CONFIRM:
            cur = await conn.execute(
                "SELECT arrears FROM accounts WHERE account_id = %s", (account_id,)
            )
            arrears = await cur.fetchone()
            await enqueue_notice(
                conn,
                account_id=account_id,
                kind=_NOTICE_ON_CONFIRM[action],
                amount=Decimal(arrears[0]) if arrears else Decimal(0),
                run_id=run_id,
                actor=actor,
            )
    return True


async def escalate(
    conn: Conn,
    *,
    meter_id: str,
    command_id: int,
    action: CommandAction,
    state: CommandState,
    outcome: str,
) -> None:
    """Put the meter on the technicians' work list (an alert of the command kinds, with its
    notification outbox row)."""
    kind = "command_unconfirmed" if state is CommandState.UNCONFIRMED else "command_rejected"
    severity = "critical" if "bad_signature" in outcome else "warning"
    cur = await conn.execute(
        "INSERT INTO alert_data (meter_id, kind, severity, start_ts, evidence)"
        " VALUES (%s, %s, %s, now(), %s) RETURNING id",
        (
            meter_id,
            kind,
            severity,
            Jsonb({"command_id": command_id, "action": action.value, "reason": outcome}),
        ),
    )
    got = await cur.fetchone()
    assert got is not None
    await conn.execute(
        "INSERT INTO alert_outbox (alert_id, payload) VALUES (%s, %s)",
        (
            got[0],
            Jsonb(
                {
                    "type": "alert",
                    "alert_id": got[0],
                    "meter_id": meter_id,
                    "kind": kind,
                    "severity": severity,
                    "command_id": command_id,
                    "reason": outcome,
                }
            ),
        ),
    )


_COMMAND_COLUMNS: Final = (
    "command_id, meter_id, action, state, origin, requested_by, reason, outcome, account_id,"
    " run_id, windowed, not_before, attempts, probes, reissues, created_at, sent_at,"
    " acknowledged_at, confirmed_at, finished_at, confirmed_state"
)
_MESSAGE_COLUMNS: Final = (
    "command_id, message_id, action, issued_at, expires_at, published_at, publishes,"
    " reply_result, reply_reason, replied_at"
)


async def _with_messages(conn: Conn, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = [c["command_id"] for c in commands]
    by_id: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM command_messages WHERE command_id = ANY(%s)"
                " ORDER BY created_at, message_id",
                (ids,),
            )
            for message in await cur.fetchall():
                by_id[message.pop("command_id")].append(message)
    for command in commands:
        command["messages"] = by_id[command["command_id"]]
    return commands


async def get_command(conn: Conn, command_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM meter_commands WHERE command_id = %s", (command_id,)
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"command {command_id} is not known")
    return (await _with_messages(conn, [row]))[0]


async def list_commands(conn: Conn, meter_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """A meter's commands, newest first, each with its messages and the meter's replies."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT 1 FROM meters WHERE meter_id = %s", (meter_id,))
        if await cur.fetchone() is None:
            raise NotFoundError(f"meter {meter_id} is not registered")
        await cur.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM meter_commands WHERE meter_id = %s"
            " ORDER BY command_id DESC LIMIT %s",
            (meter_id, limit),
        )
        rows = await cur.fetchall()
    return await _with_messages(conn, rows)
