"""Customer notices: plain-language templates, and writing a notice with its notification
outbox row in the caller's transaction (the notifier delivers it later, exactly once).

Templates say what happened or will happen, the amount due and how to pay. Pure rendering;
:func:`enqueue_notice` is the one function here that touches the database.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from gateway import audit

__all__ = ["KINDS", "enqueue_notice", "render"]

_HOW_TO_PAY: Final = (
    "Pay at any municipal pay point, by EFT using your account number as the reference, or "
    "at a prepaid vendor. If you dispute the amount or want a payment arrangement, call the "
    "revenue office before the date above."
)

_TEMPLATES: Final[dict[str, str]] = {
    "notice": (
        "Account {account_id}: R {amount} of your municipal account is overdue. "
        "Please pay it, or contact us to arrange payment. {how_to_pay}"
    ),
    "final_notice": (
        "FINAL NOTICE, account {account_id}: R {amount} is still overdue. If it is not paid "
        "or arranged within {days} days of this notice, your electricity may be disconnected "
        "or your water supply restricted. {how_to_pay}"
    ),
    "disconnection": (
        "Account {account_id}: your electricity has been disconnected for R {amount} overdue. "
        "It is reconnected as soon as the arrears are paid or arranged. {how_to_pay}"
    ),
    "restriction": (
        "Account {account_id}: your water supply has been restricted for R {amount} overdue. "
        "Full supply returns as soon as the arrears are paid or arranged. {how_to_pay}"
    ),
    "reconnection": (
        "Account {account_id}: thank you. Your supply is being restored. Amount still due: "
        "R {amount}."
    ),
}

KINDS: Final = frozenset(_TEMPLATES)


def render(kind: str, *, account_id: str, amount: Decimal, days: int = 14) -> str:
    """The notice text for ``kind``."""
    return _TEMPLATES[kind].format(
        account_id=account_id,
        amount=format(amount.quantize(Decimal("0.01")), ",f").replace(",", " "),
        days=days,
        how_to_pay=_HOW_TO_PAY,
    )


async def enqueue_notice(
    conn: psycopg.AsyncConnection[Any],
    *,
    account_id: str,
    kind: str,
    amount: Decimal,
    run_id: int | None,
    actor: str,
    days: int = 14,
) -> int:
    """Write a notice and its outbox row (in the caller's transaction); returns its id."""
    cur = await conn.execute(
        "SELECT contact_numbers FROM accounts WHERE account_id = %s", (account_id,)
    )
    row = await cur.fetchone()
    contacts = list(row[0]) if row else []
    cur = await conn.execute(
        "INSERT INTO control_notices (account_id, kind, amount, run_id)"
        " VALUES (%s, %s, %s, %s) RETURNING notice_id",
        (account_id, kind, amount, run_id),
    )
    got = await cur.fetchone()
    assert got is not None
    notice_id = int(got[0])
    payload = {
        "type": "credit_control_notice",
        "notice_id": notice_id,
        "kind": kind,
        "account_id": account_id,
        "amount": format(amount, "f"),
        "to": contacts,
        "text": render(kind, account_id=account_id, amount=amount, days=days),
    }
    await conn.execute(
        "INSERT INTO alert_outbox (notice_id, event, payload) VALUES (%s, 'notice', %s)",
        (notice_id, Jsonb(payload)),
    )
    await audit.record(
        conn,
        actor=actor,
        action="control.notice",
        object=f"account:{account_id}",
        outcome="queued",
        detail={"notice_id": notice_id, "kind": kind, "amount": str(amount), "run_id": run_id},
    )
    return notice_id
