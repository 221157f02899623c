"""The vending service: quotes, credit vends, free issues, reprints, reversals, confirmations.

Money-moving requests (credit, free issue, reversal, confirmation) are idempotent per vendor
and ``request_id``: :mod:`gateway.vending.idempotency` runs each in one transaction with its
idempotency record, its audit record and its stored response. Sales of one meter serialise on
the meter's vending row (month-to-date blocks, free units, TIDs, arrears); float debits on the
vendor's row. Correctness rests on those database locks alone; the one in-process queue (retries
of a request id still running in this process wait there instead of on pooled connections) only
saves connections, and several processes are as safe as one.

Every operation writes its own audit record (the vendor, the request id, the outcome, and the
HTTP :class:`~gateway.audit.Origin` when it came over HTTP): refusals too, in a transaction of
their own once the request's has rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.audit import Origin
from gateway.vending import store
from gateway.vending.config import VendingConfig
from gateway.vending.errors import (
    AlreadyAcceptedError,
    AlreadyReversedError,
    InvalidAmountError,
    ReversalWindowClosedError,
    UnknownReceiptError,
    VendingBusyError,
    VendingError,
)
from gateway.vending.idempotency import Idempotency, Outcome, VendRequest, Work, connection
from gateway.vending.keys import DecoderKeySource
from gateway.vending.pricing import CENT
from gateway.vending.receipt import dumps, money, rfc3339, units
from gateway.vending.sale import Sales

__all__ = ["VendingConfig", "VendingService"]

log = logging.getLogger(__name__)

_ZERO: Final = Decimal(0)


def _check_amount(amount: Decimal) -> Decimal:
    if not amount.is_finite() or amount < 0:
        raise InvalidAmountError("amount must be a non-negative decimal number of rand")
    if amount != amount.quantize(CENT):
        raise InvalidAmountError("amount has more than two decimal places")
    return amount.quantize(CENT)


class VendingService:
    """Vending operations on a connection pool and a decoder key source."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        keys: DecoderKeySource,
        config: VendingConfig | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.pool = pool
        self._keys = keys
        self.config = config or VendingConfig()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sales = Sales(keys, self.config)
        self._idempotency = Idempotency(pool, self.config)

    def _connection(self) -> AbstractAsyncContextManager[AsyncConnection[Any]]:
        """A pooled connection, waited for no longer than ``config.db_wait``."""
        return connection(self.pool, self.config)

    async def _idempotent(
        self, request: VendRequest, operation: str, fields: dict[str, Any], work: Work
    ) -> bytes:
        """Run ``work`` once per request id; a refusal is audited and raised."""
        try:
            return await self._idempotency.run(request, operation, fields, work)
        except VendingBusyError as exc:
            # Nothing was decided, and connections are what is short: no audit record.
            log.warning(
                "vending request not served: %s", exc.message, extra={"vendor": request.vendor}
            )
            raise
        except VendingError as exc:
            await self._idempotency.record_refusal(request, exc)
            raise

    # -- operations ------------------------------------------------------------------------

    async def quote(self, vendor: str, meter_id: str, amount: Decimal) -> dict[str, Any]:
        """Trial vend: what ``amount`` buys now. No token, no charge, nothing written."""
        amount = _check_amount(amount)
        now = self._clock()
        async with self._connection() as conn, conn.pipeline(), conn.transaction():
            plan = await self._sales.plan(conn, meter_id, amount, now, lock=False, want_credit=True)
            balance = await store.float_balance(conn, vendor, lock=False)
        quote = plan.quote
        assert quote is not None
        return {
            "meter": meter_id,
            "utility": plan.meter.utility,
            "amount": money(amount),
            "units": units(quote.tenths),
            "charges": {
                "vat": money(quote.vat),
                "fixed": money(quote.fixed),
                "debt_recovered": money(quote.debt_recovered),
            },
            "blocks": [
                {
                    "from": format(use.lower.normalize(), "f"),
                    "to": None if use.upper is None else format(use.upper.normalize(), "f"),
                    "rate": format(use.rate.normalize(), "f"),
                    "units": units(use.tenths),
                }
                for use in quote.blocks
            ],
            "free_basic_due": plan.free_due,
            "free_basic_units": units(self.config.free_tenths(plan.meter.utility))
            if plan.free_due
            else None,
            "key_change_due": plan.target is not None,
            "min_amount": money(self.config.min_amount),
            "max_amount": money(self.config.max_amount),
            "float_balance": money(balance),
        }

    async def credit(
        self,
        vendor: str,
        request_id: str,
        meter_id: str,
        amount: Decimal,
        *,
        origin: Origin | None = None,
    ) -> bytes:
        """Credit vend: the receipt bytes (stored; a retry gets the same bytes)."""
        amount = _check_amount(amount)
        fields = {"meter": meter_id, "amount": money(amount)}
        request = VendRequest(
            vendor, request_id, "vend.credit", f"meter:{meter_id}", origin or Origin()
        )

        async def work(conn: AsyncConnection[Any]) -> Outcome:
            return await self._sales.issue(
                conn, request, now=self._clock(), meter_id=meter_id, amount=amount, kind="sale"
            )

        return await self._idempotent(request, "credit", fields, work)

    async def free_issue(
        self, vendor: str, request_id: str, meter_id: str, *, origin: Origin | None = None
    ) -> bytes:
        """This month's free basic units without a purchase (``no_free_units_due`` if none)."""
        request = VendRequest(
            vendor, request_id, "vend.free_issue", f"meter:{meter_id}", origin or Origin()
        )

        async def work(conn: AsyncConnection[Any]) -> Outcome:
            return await self._sales.issue(
                conn, request, now=self._clock(), meter_id=meter_id, amount=_ZERO,
                kind="free_issue",
            )  # fmt: skip

        return await self._idempotent(request, "free_issue", {"meter": meter_id}, work)

    async def reprint(
        self,
        vendor: str,
        *,
        receipt_no: str | None,
        meter_id: str | None,
        last: int,
        request_id: str | None = None,
        origin: Origin | None = None,
    ) -> list[dict[str, Any]]:
        """Original receipts, marked ``reprint`` with their current state; never a new token."""
        request = VendRequest(
            vendor,
            request_id,
            "vend.reprint",
            f"receipt:{receipt_no}" if receipt_no else f"meter:{meter_id}",
            origin or Origin(),
        )
        query = (
            "SELECT r.response, s.state FROM sales s JOIN vend_requests r"
            " ON r.vendor = s.vendor AND r.request_id = s.request_id WHERE s.vendor = %s"
        )
        params: list[Any] = [vendor]
        if receipt_no is not None:
            query += " AND s.receipt_no = %s"
            params.append(receipt_no)
        if meter_id is not None:
            query += " AND s.meter_id = %s"
            params.append(meter_id)
        query += " ORDER BY s.sale_id DESC LIMIT %s"
        params.append(last)
        async with self._connection() as conn, conn.pipeline(), conn.transaction():
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
            if not rows:
                error = UnknownReceiptError(
                    f"no receipt {receipt_no}"
                    if receipt_no is not None
                    else f"no sale to meter {meter_id} by this vendor"
                )
                raise error
            await request.record(conn, "reprinted", {"count": len(rows)})
        receipts = []
        for response, state in rows:
            document = orjson.loads(bytes(response))
            document["reprint"] = True
            document["state"] = state
            receipts.append(document)
        return receipts

    async def reverse(
        self, vendor: str, request_id: str, receipt_no: str, *, origin: Origin | None = None
    ) -> bytes:
        """Reversal advice: refund the float and mark the sale reversed, while still safe."""
        request = VendRequest(
            vendor, request_id, "vend.reverse", f"receipt:{receipt_no}", origin or Origin()
        )

        async def work(conn: AsyncConnection[Any]) -> Outcome:
            now = self._clock()
            # Locks in the order the other parties take them: the sale's tokens, then the sale
            # (as keypad delivery and a meter's token result do); the meter, the account, then
            # the vendor's float (as a sale does: it locks an account in arrears with the meter).
            await conn.execute(
                "SELECT 1 FROM vend_tokens t JOIN sales s USING (sale_id)"
                " WHERE s.vendor = %s AND s.receipt_no = %s ORDER BY t.token_id FOR UPDATE OF t",
                (vendor, receipt_no),
            )
            cur = await conn.execute(
                "SELECT sale_id, state, amount, issued_at, confirmed_at, debt_recovered,"
                " account_id, meter_id FROM sales WHERE vendor = %s AND receipt_no = %s"
                " FOR UPDATE",
                (vendor, receipt_no),
            )
            row = await cur.fetchone()
            if row is None:
                raise UnknownReceiptError(f"no receipt {receipt_no} for this vendor")
            sale_id, state, amount, issued_at, confirmed_at, recovered, account_id, meter = row
            if state == "reversed":
                raise AlreadyReversedError(f"sale {receipt_no} is already reversed")
            cur = await conn.execute(
                "SELECT 1 FROM vend_tokens WHERE sale_id = %s AND state = 'accepted'", (sale_id,)
            )
            if state == "accepted" or await cur.fetchone() is not None:
                raise AlreadyAcceptedError(
                    f"the meter already accepted a token of sale {receipt_no}"
                )
            if confirmed_at is not None:
                raise ReversalWindowClosedError(
                    f"sale {receipt_no} was confirmed as delivered to the customer"
                )
            if now > issued_at + self.config.reversal_window:
                raise ReversalWindowClosedError(
                    f"sale {receipt_no} is older than the reversal window"
                )
            # The meter's sales wait for this one: the month so far and the free units it
            # gives back are then read by the next sale as they stand after the reversal.
            await conn.execute(
                "SELECT 1 FROM meter_vending WHERE meter_id = %s FOR UPDATE", (meter,)
            )
            await conn.execute(
                "UPDATE sales SET state = 'reversed', reversed_at = %s WHERE sale_id = %s",
                (now, sale_id),
            )
            # The month's free basic units go back too: the customer never got the receipt.
            await conn.execute(
                "UPDATE vend_tokens SET fbe_reversed_month = fbe_month, fbe_month = NULL"
                " WHERE sale_id = %s AND fbe_month IS NOT NULL",
                (sale_id,),
            )
            if account_id is not None and recovered > 0:
                await conn.execute(
                    "UPDATE accounts SET arrears = arrears + %s, updated_at = now()"
                    " WHERE account_id = %s",
                    (recovered, account_id),
                )
            balance = await store.float_balance(conn, vendor, lock=True)
            if amount > 0:
                balance = await store.move_float(
                    conn, vendor, "reversal", amount, balance, sale_id=sale_id, note=receipt_no
                )
            body = dumps(
                {
                    "receipt_no": receipt_no,
                    "request_id": request_id,
                    "state": "reversed",
                    "amount": money(amount),
                    "float_balance": money(balance),
                    "reversed_at": rfc3339(now),
                }
            )
            return Outcome(body, "reversed", {"amount": money(amount)})

        return await self._idempotent(request, "reverse", {"receipt_no": receipt_no}, work)

    async def confirm(
        self, vendor: str, request_id: str, receipt_no: str, *, origin: Origin | None = None
    ) -> bytes:
        """The customer got the receipt: closes the reversal window."""
        request = VendRequest(
            vendor, request_id, "vend.confirm", f"receipt:{receipt_no}", origin or Origin()
        )

        async def work(conn: AsyncConnection[Any]) -> Outcome:
            now = self._clock()
            cur = await conn.execute(
                "UPDATE sales SET confirmed_at = coalesce(confirmed_at, %s)"
                " WHERE vendor = %s AND receipt_no = %s RETURNING state, confirmed_at",
                (now, vendor, receipt_no),
            )
            row = await cur.fetchone()
            if row is None:
                raise UnknownReceiptError(f"no receipt {receipt_no} for this vendor")
            body = dumps(
                {
                    "receipt_no": receipt_no,
                    "request_id": request_id,
                    "state": row[0],
                    "confirmed_at": rfc3339(row[1]),
                }
            )
            return Outcome(body, "confirmed")

        return await self._idempotent(request, "confirm", {"receipt_no": receipt_no}, work)

    async def float_balance(self, vendor: str) -> str:
        """The vendor's float balance as a decimal string."""
        async with self._connection() as conn, conn.transaction():
            return money(await store.float_balance(conn, vendor, lock=False))

    async def transactions(self, vendor: str, *, after: int | None, limit: int) -> dict[str, Any]:
        """The vendor's own sales and free issues, oldest first, keyset-paged by ``after``."""
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT sale_id, receipt_no, request_id, kind, meter_id, amount, units_tenths,"
                " free_tenths, state, issued_at, confirmed_at, reversed_at FROM sales"
                " WHERE vendor = %s AND sale_id > %s ORDER BY sale_id LIMIT %s",
                (vendor, after or 0, limit + 1),
            )
            rows = await cur.fetchall()
        items = [
            {
                "id": row[0],
                "receipt_no": row[1],
                "request_id": row[2],
                "kind": row[3],
                "meter": row[4],
                "amount": money(row[5]),
                "units": units(row[6]),
                "free_units": units(row[7]),
                "state": row[8],
                "issued_at": rfc3339(row[9]),
                "confirmed_at": None if row[10] is None else rfc3339(row[10]),
                "reversed_at": None if row[11] is None else rfc3339(row[11]),
            }
            for row in rows[:limit]
        ]
        next_after = items[-1]["id"] if len(rows) > limit else None
        return {"transactions": items, "next_after": next_after}
