"""Storing accounts' credit-control records: account terms, arrears balances, payments,
disputes and arrangements. Each change is one transaction together with its audit record.

Idempotency: a payment is stored once per ``reference``; an imported account or arrears row
once per content key (``control_import_rows``); an arrears balance older than the one stored
(``as_of``) is refused as stale. Payments reduce the arrears (never below zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from gateway import audit
from gateway.control.execution import release_after_change
from gateway.control.records import (
    AccountRecord,
    ArrearsRecord,
    PaymentRecord,
    RecordError,
    row_key,
)
from gateway.errors import ConflictError, NotFoundError, StorageRejectedError, ValidationError

__all__ = [
    "ACCOUNT_VIEW",
    "Outcome",
    "UnknownAccountError",
    "account_view",
    "apply_account",
    "apply_arrears",
    "record_payment",
    "set_arrangement",
    "set_dispute",
]

Outcome = Literal["stored", "unchanged", "stale"]

Conn = psycopg.AsyncConnection[Any]

ACCOUNT_VIEW = (
    "account_id, customer_class, contact_numbers, indigent_from, indigent_to, essential,"
    " essential_reason, pays_above_free_allocation, arrears, arrears_since, arrears_as_of,"
    " debt_recovery_share, dispute_amount, dispute_state, arrangement_state, arrangement_since,"
    " arrangement_instalment"
)


class UnknownAccountError(NotFoundError):
    """The account is not known."""


@dataclass(frozen=True, slots=True)
class _Seen:
    kind: str
    key: str


async def _seen(conn: Conn, kind: str, key: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM control_import_rows WHERE kind = %s AND row_key = %s", (kind, key)
    )
    return await cur.fetchone() is not None


async def _remember(conn: Conn, seen: _Seen, account_id: str, source: str) -> None:
    await conn.execute(
        "INSERT INTO control_import_rows (kind, row_key, account_id, source)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (seen.kind, seen.key, account_id, source),
    )


async def _require_account(conn: Conn, account_id: str, *, lock: bool = False) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {ACCOUNT_VIEW} FROM accounts WHERE account_id = %s"
        + (" FOR UPDATE" if lock else ""),
        (account_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise UnknownAccountError(f"account {account_id} is not known")
    return row


async def apply_account(
    conn: Conn, record: AccountRecord, *, actor: str, source: str, by_key: bool = False
) -> Outcome:
    """Create or update an account's credit-control terms (and, when given, its meters)."""
    seen = _Seen("accounts", row_key("accounts", record))
    async with conn.transaction():
        if by_key and await _seen(conn, seen.kind, seen.key):
            return "unchanged"
        if record.meters:
            cur = await conn.execute(
                "SELECT meter_id FROM meters WHERE meter_id = ANY(%s)", (list(record.meters),)
            )
            known = {row[0] for row in await cur.fetchall()}
            missing = sorted(set(record.meters) - known)
            if missing:
                raise RecordError(f"meters: {len(missing)} unknown meter(s), first {missing[0]}")
            # The meters before the account, as a sale or a reversal locks them.
            await conn.execute(
                "SELECT 1 FROM meter_vending WHERE meter_id = ANY(%s) ORDER BY meter_id FOR UPDATE",
                (list(record.meters),),
            )
        await conn.execute(
            "INSERT INTO accounts (account_id, customer_class, contact_numbers, indigent_from,"
            " indigent_to, essential, essential_reason, pays_above_free_allocation)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (account_id) DO UPDATE SET customer_class = excluded.customer_class,"
            " contact_numbers = excluded.contact_numbers,"
            " indigent_from = excluded.indigent_from, indigent_to = excluded.indigent_to,"
            " essential = excluded.essential, essential_reason = excluded.essential_reason,"
            " pays_above_free_allocation = excluded.pays_above_free_allocation,"
            " updated_at = now()",
            (
                record.account_id,
                record.customer_class,
                list(record.contact_numbers),
                record.indigent_from,
                record.indigent_to,
                record.essential,
                record.essential_reason,
                record.pays_above_free_allocation,
            ),
        )
        if record.meters:
            await conn.execute(
                "INSERT INTO meter_vending (meter_id, account_id)"
                " SELECT unnest(%s::text[]), %s ON CONFLICT (meter_id) DO UPDATE"
                " SET account_id = excluded.account_id, updated_at = now()",
                (list(record.meters), record.account_id),
            )
        if by_key:
            await _remember(conn, seen, record.account_id, source)
        await audit.record(
            conn,
            actor=actor,
            action="control.account",
            object=f"account:{record.account_id}",
            outcome="stored",
            source=source,
            detail={
                "essential": record.essential,
                "indigent_from": str(record.indigent_from or ""),
                "indigent_to": str(record.indigent_to or ""),
                "meters": list(record.meters or ()),
            },
        )
    return "stored"


async def apply_arrears(
    conn: Conn, record: ArrearsRecord, *, actor: str, source: str, by_key: bool = False
) -> Outcome:
    """Set an account's arrears balance as of a date; an older balance than the stored one is
    ``stale`` and changes nothing."""
    seen = _Seen("arrears", row_key("arrears", record))
    async with conn.transaction():
        if by_key and await _seen(conn, seen.kind, seen.key):
            return "unchanged"
        current = await _require_account(conn, record.account_id, lock=True)
        stored_as_of: date | None = current["arrears_as_of"]
        if stored_as_of is not None and record.as_of < stored_as_of:
            outcome: Outcome = "stale"
        else:
            await conn.execute(
                "UPDATE accounts SET arrears = %s, arrears_since = %s, arrears_as_of = %s,"
                " updated_at = now() WHERE account_id = %s",
                (record.arrears, record.arrears_since, record.as_of, record.account_id),
            )
            outcome = "stored"
        if by_key:
            await _remember(conn, seen, record.account_id, source)
        await audit.record(
            conn,
            actor=actor,
            action="control.arrears",
            object=f"account:{record.account_id}",
            outcome=outcome,
            source=source,
            detail={"arrears": str(record.arrears), "as_of": str(record.as_of)},
        )
    return outcome


async def record_payment(
    conn: Conn, record: PaymentRecord, *, actor: str, source: str
) -> tuple[Outcome, Decimal]:
    """Store a payment once (by reference) and reduce the account's arrears by it; returns the
    outcome and the arrears after it."""
    async with conn.transaction():
        account = await _require_account(conn, record.account_id, lock=True)
        cur = await conn.execute(
            "SELECT account_id, amount FROM account_payments WHERE reference = %s",
            (record.reference,),
        )
        existing = await cur.fetchone()
        if existing is not None:
            if (existing[0], existing[1]) != (record.account_id, record.amount):
                raise ConflictError(
                    f"payment {record.reference} is already recorded with other details"
                )
            return "unchanged", Decimal(account["arrears"])
        arrears = Decimal(account["arrears"])
        applied = min(arrears, record.amount)
        try:
            await conn.execute(
                "INSERT INTO account_payments (reference, account_id, amount, applied, paid_at,"
                " source) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    record.reference,
                    record.account_id,
                    record.amount,
                    applied,
                    record.paid_at,
                    source,
                ),
            )
        except psycopg.errors.CheckViolation as exc:
            raise StorageRejectedError("the payment was refused by the database") from exc
        left = arrears - applied
        await conn.execute(
            "UPDATE accounts SET arrears = %s,"
            " arrears_since = CASE WHEN %s = 0 THEN NULL ELSE arrears_since END,"
            " updated_at = now() WHERE account_id = %s",
            (left, left, record.account_id),
        )
        await audit.record(
            conn,
            actor=actor,
            action="control.payment",
            object=f"account:{record.account_id}",
            outcome="stored",
            source=source,
            detail={
                "reference": record.reference,
                "amount": str(record.amount),
                "applied": str(applied),
                "arrears_after": str(left),
            },
        )
        await release_after_change(
            conn, record.account_id, actor=actor, cause=f"payment {record.reference}"
        )
    return "stored", left


async def set_dispute(
    conn: Conn, account_id: str, *, amount: Decimal, state: str, actor: str, reason: str
) -> dict[str, Any]:
    """Record a dispute (an amount and its state: open, resolved, rejected, none)."""
    if state not in ("none", "open", "resolved", "rejected"):
        raise ValidationError("dispute state must be none, open, resolved or rejected")
    async with conn.transaction():
        await _require_account(conn, account_id, lock=True)
        await conn.execute(
            "UPDATE accounts SET dispute_amount = %s, dispute_state = %s, updated_at = now()"
            " WHERE account_id = %s",
            (amount, state, account_id),
        )
        await audit.record(
            conn,
            actor=actor,
            action="control.dispute",
            object=f"account:{account_id}",
            outcome=state,
            detail={"amount": str(amount), "reason": reason},
        )
        await release_after_change(conn, account_id, actor=actor, cause=f"dispute {state}")
        return await _require_account(conn, account_id)


async def set_arrangement(
    conn: Conn,
    account_id: str,
    *,
    state: str,
    since: date | None,
    instalment: Decimal | None,
    actor: str,
    reason: str,
) -> dict[str, Any]:
    """Record a payment arrangement's state: active (being kept), broken, completed, none."""
    if state not in ("none", "active", "broken", "completed"):
        raise ValidationError("arrangement state must be none, active, broken or completed")
    if state == "active" and (since is None or instalment is None):
        raise ValidationError("an active arrangement needs its start date and instalment")
    async with conn.transaction():
        await _require_account(conn, account_id, lock=True)
        await conn.execute(
            "UPDATE accounts SET arrangement_state = %s, arrangement_since = %s,"
            " arrangement_instalment = %s, updated_at = now() WHERE account_id = %s",
            (state, since, instalment, account_id),
        )
        await audit.record(
            conn,
            actor=actor,
            action="control.arrangement",
            object=f"account:{account_id}",
            outcome=state,
            detail={
                "since": str(since or ""),
                "instalment": str(instalment or ""),
                "reason": reason,
            },
        )
        await release_after_change(conn, account_id, actor=actor, cause=f"arrangement {state}")
        return await _require_account(conn, account_id)


async def account_view(conn: Conn, account_id: str) -> dict[str, Any]:
    """An account's credit-control terms, its meters, payments, commands, notices, charges and
    audit history."""
    account = await _require_account(conn, account_id)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT m.meter_id, m.utility, m.payment FROM meter_vending v"
        " JOIN meters m USING (meter_id) WHERE v.account_id = %s ORDER BY m.meter_id",
        (account_id,),
    )
    account["meters"] = await cur.fetchall()
    await cur.execute(
        "SELECT reference, amount, applied, paid_at, source FROM account_payments"
        " WHERE account_id = %s ORDER BY paid_at, payment_id",
        (account_id,),
    )
    account["payments"] = await cur.fetchall()
    meters = [f"meter:{m['meter_id']}" for m in account["meters"]]
    await cur.execute(
        "SELECT command_id, meter_id, action, state, origin, requested_by, reason, outcome,"
        " run_id, created_at, sent_at, confirmed_at, finished_at, confirmed_state"
        " FROM meter_commands WHERE account_id = %s OR meter_id = ANY(%s) ORDER BY command_id",
        (account_id, [m["meter_id"] for m in account["meters"]]),
    )
    account["commands"] = await cur.fetchall()
    await cur.execute(
        "SELECT notice_id, kind, amount, run_id, created_at, served_on FROM control_notices"
        " WHERE account_id = %s ORDER BY notice_id",
        (account_id,),
    )
    account["notices"] = await cur.fetchall()
    await cur.execute(
        "SELECT kind, amount, command_id, created_at FROM account_charges"
        " WHERE account_id = %s ORDER BY charge_id",
        (account_id,),
    )
    account["charges"] = await cur.fetchall()
    # The account's own records, and every command to, and reply from, its meters.
    await cur.execute(
        "SELECT at, actor, action, object, outcome, detail FROM audit_log WHERE object = %s"
        " OR (object = ANY(%s) AND action LIKE 'command.%%') ORDER BY id",
        (f"account:{account_id}", meters),
    )
    account["history"] = await cur.fetchall()
    return account
