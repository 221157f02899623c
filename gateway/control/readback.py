"""What the meters say about commands: their replies, and the state they report.

A reply ``ok`` only acknowledges a command. It is confirmed when the meter's own reported state
matches the order (:func:`gateway.control.lifecycle.satisfies`): its status document's
``relay`` / ``valve`` received after the command was first signed, or the latest ``96.3.10`` /
``24.4.0`` reading received after it. A reply that refuses a command ends it ``rejected`` with
the meter's reason (and puts the meter on the work list), except ``expired`` for a message
delivered after its expiry (the meter was away: it is re-issued) and ``replayed`` for a message
the gateway signed (published again after a crash, or replayed by someone: the meter had it
already, and its state says whether it took effect). A reply
to a message this gateway never sent is recorded in the audit log as ``unsolicited``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Final

import psycopg

from gateway import audit
from gateway.control.commands import escalate, finish
from gateway.control.lifecycle import CommandState, MeterReport, report_from_channels, satisfies
from protocols.commands import CLOCK_SKEW, CommandAction

__all__ = ["ACTOR", "apply_replies", "confirm"]

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]
ACTOR: Final = "command-loop"
"""Who the audit log names for what the command loop does."""


async def apply_replies(conn: Conn, *, batch: int, confirm_timeout: timedelta) -> int:
    """Apply the meters' replies not yet applied: ``ok`` acknowledges, a refusal ends the
    command (or marks it expired when it was delivered late); returns how many.

    A reply is also proof that its message went out: one the gateway had not yet recorded as
    published (it died, or its wait for the PUBACK timed out, after the broker took it) is
    recorded now, so that it is not published again.
    """
    async with conn.transaction(), conn.pipeline():
        cur = await conn.execute(
            "SELECT r.reply_id, r.meter_id, r.message_id, r.result, r.reason, r.received_at,"
            " m.command_id, m.action, m.expires_at, c.state, c.action"
            " FROM command_replies r"
            " LEFT JOIN command_messages m"
            "   ON m.message_id = r.message_id AND m.meter_id = r.meter_id"
            " LEFT JOIN meter_commands c ON c.command_id = m.command_id"
            " WHERE r.applied_at IS NULL ORDER BY r.reply_id LIMIT %s"
            " FOR UPDATE OF r SKIP LOCKED",
            (batch,),
        )
        rows = await cur.fetchall()
        for row in rows:
            outcome = await _apply_reply(conn, row, confirm_timeout)
            await conn.execute(
                "UPDATE command_replies SET applied_at = now(), outcome = %s WHERE reply_id = %s",
                (outcome, row[0]),
            )
    return len(rows)


async def _apply_reply(conn: Conn, row: tuple[Any, ...], confirm_timeout: timedelta) -> str:
    (_, meter_id, message_id, result, reason, received_at) = row[:6]
    command_id, message_action, expires_at, state, action = row[6:]
    if command_id is None:
        # The meter answered a command this gateway never sent: forged, or another sender.
        log.warning(
            "reply to a command this gateway never sent",
            extra={"meter_id": meter_id, "result": result, "reason": reason},
        )
        await audit.record(
            conn,
            actor=f"meter:{meter_id}",
            action="command.reply.unsolicited",
            object=f"meter:{meter_id}",
            outcome=str(result),
            detail={"message_id": message_id, "reason": reason},
        )
        return "unsolicited"
    await conn.execute(
        "UPDATE command_messages SET reply_result = coalesce(reply_result, %s),"
        " reply_reason = CASE WHEN reply_result IS NULL THEN %s ELSE reply_reason END,"
        " replied_at = coalesce(replied_at, now()),"
        " publishes = CASE WHEN published_at IS NULL THEN publishes + 1 ELSE publishes END,"
        " published_at = coalesce(published_at, now())"
        " WHERE message_id = %s",
        (result, reason, message_id),
    )
    if message_action == action and state == CommandState.PLANNED.value:
        await conn.execute(
            "UPDATE meter_commands SET state = 'sent', sent_at = coalesce(sent_at, now()),"
            " due_at = now() + %s WHERE command_id = %s AND state = 'planned'",
            (confirm_timeout, command_id),
        )
        state = CommandState.SENT.value
    await audit.record(
        conn,
        actor=f"meter:{meter_id}",
        action="command.reply",
        object=f"meter:{meter_id}",
        outcome=str(result),
        detail={"command_id": command_id, "message_id": message_id, "reason": reason},
    )
    refused = result == "rejected" and reason not in ("replayed", "expired")
    is_attempt = message_action == action
    # ``replayed`` for a message this gateway signed: the meter has had it already (it was
    # published again after a crash, or someone replayed it): not a refusal.
    acknowledges = result == "ok" or (result == "rejected" and reason == "replayed")
    if state == CommandState.CONFIRMED.value and is_attempt and acknowledges:
        # The meter's reported state confirmed the command before this reply was applied (the
        # two travel separately): the command's record still shows that the meter acknowledged
        # it, with the time the gateway applied the reply, as for any acknowledgement.
        await conn.execute(
            "UPDATE meter_commands SET acknowledged_at = coalesce(acknowledged_at, now())"
            " WHERE command_id = %s",
            (command_id,),
        )
    if state not in ("sent", "acknowledged", "expired"):
        if refused and state != CommandState.REJECTED.value:
            # Too late to change the command, but a refusal (a bad signature above all) is
            # never let pass: the meter goes on the work list.
            await escalate(
                conn,
                meter_id=meter_id,
                command_id=command_id,
                action=CommandAction(message_action),
                state=CommandState.REJECTED,
                outcome=f"the meter refused {message_action}: {reason}",
            )
        return f"command already {state}"
    if acknowledges:
        if is_attempt and state == "sent":
            await conn.execute(
                "UPDATE meter_commands SET state = 'acknowledged',"
                " acknowledged_at = coalesce(acknowledged_at, now())"
                " WHERE command_id = %s AND state = 'sent'",
                (command_id,),
            )
            return "acknowledged"
        return "noted"
    if reason == "expired" and received_at >= expires_at:
        # Delivered after its expiry (the meter was away): re-issued once it is back —
        # unless it has been already (the old message can arrive after the new one left).
        await conn.execute(
            "UPDATE meter_commands c SET state = 'expired', due_at = NULL"
            " WHERE c.command_id = %s AND c.state IN ('sent', 'acknowledged')"
            " AND NOT EXISTS (SELECT 1 FROM command_messages n, command_messages m"
            "   WHERE m.message_id = %s AND n.command_id = c.command_id"
            "   AND n.action = c.action AND n.created_at > m.created_at)",
            (command_id, message_id),
        )
        return "expired"
    await finish(
        conn,
        command_id,
        CommandState.REJECTED,
        f"the meter refused {message_action}: {reason}",
        actor=ACTOR,
    )
    return "rejected"


async def confirm(conn: Conn, *, batch: int, after: int = 0) -> tuple[int, int]:
    """Confirm the commands whose meter has reported the ordered state since the command
    was first signed: (how many, where the next pass goes on).

    Only commands with a report since then are looked at, ``batch`` at a time from the command
    after ``after``, so that a long list of commands still waiting cannot hide later ones; the
    second number is the last command looked at, or 0 to start again from the first.
    """
    confirmed = 0
    async with conn.transaction(), conn.pipeline():
        cur = await conn.execute(
            "SELECT c.command_id, c.action, m.status->>'relay', m.status->>'valve',"
            " m.status_received_at >= f.created_at,"
            " (SELECT r.value FROM reading_data r WHERE r.meter_id = c.meter_id"
            "   AND r.channel = '96.3.10' AND r.ts >= f.issued_at - %(skew)s"
            "   AND r.received_at >= f.created_at ORDER BY r.ts DESC LIMIT 1),"
            " (SELECT r.value FROM reading_data r WHERE r.meter_id = c.meter_id"
            "   AND r.channel = '24.4.0' AND r.ts >= f.issued_at - %(skew)s"
            "   AND r.received_at >= f.created_at ORDER BY r.ts DESC LIMIT 1)"
            " FROM meter_commands c JOIN meters m USING (meter_id)"
            " JOIN LATERAL (SELECT min(created_at) AS created_at, min(issued_at) AS issued_at"
            "   FROM command_messages WHERE command_id = c.command_id) f ON true"
            " WHERE c.state IN ('sent', 'acknowledged', 'expired') AND c.command_id > %(after)s"
            " AND (m.status_received_at >= f.created_at"
            "      OR EXISTS (SELECT 1 FROM reading_data r WHERE r.meter_id = c.meter_id"
            "        AND r.channel IN ('96.3.10', '24.4.0') AND r.ts >= f.issued_at - %(skew)s"
            "        AND r.received_at >= f.created_at))"
            " ORDER BY c.command_id LIMIT %(batch)s FOR UPDATE OF c SKIP LOCKED",
            {"skew": CLOCK_SKEW, "after": after, "batch": batch},
        )
        found = await cur.fetchall()
        last = int(found[-1][0]) if len(found) == batch else 0
        for (
            command_id,
            action,
            relay,
            valve,
            fresh,
            relay_code,
            valve_code,
        ) in found:
            reports = [report_from_channels(relay_code, valve_code)]
            if fresh:
                reports.insert(0, MeterReport(relay, valve))
            wanted = CommandAction(action)
            match = next((r for r in reports if satisfies(wanted, r)), None)
            if match is None:
                continue
            state = {"relay": match.relay, "valve": match.valve}
            if await finish(
                conn,
                command_id,
                CommandState.CONFIRMED,
                f"the meter reports relay={match.relay} valve={match.valve}",
                actor=ACTOR,
                confirmed_state=state,
            ):
                confirmed += 1
    return confirmed, last
