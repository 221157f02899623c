"""Vendor floats: top-ups and the daily statement that reconciles the float ledger.

A float's balance is the running sum of its movements (top-ups, sales, reversals, claims);
the statement lists a day's movements in the deployment's time zone with the opening and
closing balance, so that opening + Σ movements = closing can be checked line by line.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from psycopg import AsyncConnection

from gateway import audit
from gateway.vending import store
from gateway.vending.errors import InvalidAmountError, InvalidInputError
from gateway.vending.pricing import CENT
from gateway.vending.receipt import money, rfc3339

__all__ = ["daily_statement", "top_up"]

MAX_TOP_UP = Decimal("100000000.00")


async def top_up(
    conn: AsyncConnection[Any], vendor: str, amount: Decimal, *, actor: str | None, note: str = ""
) -> Decimal:
    """Credit ``amount`` to the vendor's float; returns the balance. The vendor must be an
    enabled principal with the vendor role (:class:`UnknownVendorError` otherwise); its float
    is opened on the first top-up."""
    if not amount.is_finite() or amount <= 0 or amount != amount.quantize(CENT):
        raise InvalidAmountError("a top-up is a positive amount of whole cents")
    if amount > MAX_TOP_UP:
        raise InvalidAmountError(f"a single top-up is at most {MAX_TOP_UP}")
    if not vendor or len(vendor) > 128:
        raise InvalidInputError("vendor name must be 1-128 characters")
    async with conn.transaction():
        await store.ensure_vendor(conn, vendor)
        balance = await store.float_balance(conn, vendor, lock=True)
        balance = await store.move_float(conn, vendor, "top_up", amount, balance, note=note)
        await audit.record(
            conn,
            actor=actor,
            action="vendor.top_up",
            object=f"vendor:{vendor}",
            outcome="credited",
            detail={"amount": money(amount), "balance": money(balance)},
        )
    return balance


async def daily_statement(
    conn: AsyncConnection[Any], vendor: str, day: date, zone: ZoneInfo
) -> str:
    """CSV of the vendor's float movements on ``day`` (local), with opening/closing lines."""
    start = datetime.combine(day, time(), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
    cur = await conn.execute(
        "SELECT balance_after FROM float_movements WHERE vendor = %s AND created_at < %s"
        " ORDER BY movement_id DESC LIMIT 1",
        (vendor, start),
    )
    row = await cur.fetchone()
    opening = Decimal(0) if row is None else Decimal(row[0])
    cur = await conn.execute(
        "SELECT f.movement_id, f.created_at, f.kind, f.amount, f.balance_after, s.receipt_no,"
        " s.meter_id, f.note FROM float_movements f LEFT JOIN sales s USING (sale_id)"
        " WHERE f.vendor = %s AND f.created_at >= %s AND f.created_at < %s"
        " ORDER BY f.movement_id",
        (vendor, start, end),
    )
    rows = await cur.fetchall()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "time", "kind", "amount", "balance", "receipt_no", "meter", "note"])
    writer.writerow(["opening", rfc3339(start), "opening", "", money(opening), "", "", ""])
    totals: dict[str, Decimal] = {}
    balance = opening
    for movement_id, created_at, kind, amount, balance_after, receipt_no, meter, note in rows:
        writer.writerow(
            [
                movement_id,
                rfc3339(created_at),
                kind,
                money(amount),
                money(balance_after),
                receipt_no or "",
                meter or "",
                note,
            ]
        )
        totals[kind] = totals.get(kind, Decimal(0)) + amount
        balance = Decimal(balance_after)
    for kind in ("top_up", "sale", "reversal", "claim"):
        writer.writerow(["total", "", kind, money(totals.get(kind, Decimal(0))), "", "", "", ""])
    writer.writerow(["closing", rfc3339(end), "closing", "", money(balance), "", "", ""])
    return out.getvalue()
