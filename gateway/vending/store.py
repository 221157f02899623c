"""SQL of the vending service: reading a meter's vending context, tariffs, the month so far,
float ledgers and the TID allocator. Every function runs in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
from psycopg import AsyncConnection

from gateway.vending.errors import (
    MeterBlockedError,
    MeterNotConfiguredError,
    NoTariffError,
    NotPrepaidError,
    UnknownMeterError,
)
from gateway.vending.pricing import Block, MonthToDate, Tariff
from gateway.vending.rules import StsData, SupplyGroup
from tokens.tid import TID_LIMIT

__all__ = [
    "Account",
    "MeterContext",
    "allocate_tid",
    "ensure_vendor",
    "float_balance",
    "free_units_issued",
    "load_meter",
    "month_to_date",
    "move_float",
    "supply_group",
    "tariff_for",
    "tariff_from_row",
]


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    customer_class: str
    indigent_from: date | None
    indigent_to: date | None
    arrears: Decimal
    debt_recovery_share: Decimal

    @property
    def on_register(self) -> bool:
        return self.indigent_from is not None or self.indigent_to is not None


@dataclass(frozen=True, slots=True)
class MeterContext:
    meter_id: str
    utility: str
    sts: StsData
    target_sgc: str | None
    target_ti: int | None
    account: Account | None

    @property
    def customer_class(self) -> str:
        return "domestic" if self.account is None else self.account.customer_class


async def load_meter(conn: AsyncConnection[Any], meter_id: str, *, lock: bool) -> MeterContext:
    """The meter's vending context, checked for sale; with ``lock`` its vending row and
    account are locked until the transaction ends (one sale per meter at a time)."""
    cur = await conn.execute("SELECT utility, payment FROM meters WHERE meter_id = %s", (meter_id,))
    meter = await cur.fetchone()
    if meter is None:
        raise UnknownMeterError(f"meter {meter_id} is not known")
    utility, payment = meter
    if payment != "prepaid":
        raise NotPrepaidError(f"meter {meter_id} is not a prepaid meter")
    cur = await conn.execute(
        "SELECT sgc, krn, ti, key_type, base_date, ea, dkga, target_sgc, target_ti,"
        " blocked_reason, account_id FROM meter_vending WHERE meter_id = %s"
        + (" FOR UPDATE" if lock else ""),
        (meter_id,),
    )
    row = await cur.fetchone()
    if row is not None and row[9] is not None:
        raise MeterBlockedError(f"meter {meter_id} is blocked: {row[9]}")
    if row is None or row[0] is None or utility not in ("electricity", "water"):
        raise MeterNotConfiguredError(
            f"meter {meter_id} has no STS key data on record; it cannot be vended yet"
        )
    sts = StsData(
        sgc=row[0], krn=row[1], ti=row[2], key_type=row[3], base_date=row[4], ea=row[5], dkga=row[6]
    )
    account = None
    if row[10] is not None:
        cur = await conn.execute(
            "SELECT account_id, customer_class, indigent_from, indigent_to, arrears,"
            " debt_recovery_share FROM accounts WHERE account_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (row[10],),
        )
        found = await cur.fetchone()
        if found is not None:
            account = Account(*found)
    return MeterContext(meter_id, utility, sts, row[7], row[8], account)


def tariff_from_row(row: tuple[Any, ...]) -> Tariff:
    tariff_id, utility, customer_class, effective_from, vat_rate, fixed_monthly, blocks = row
    parsed = blocks if isinstance(blocks, list) else orjson.loads(blocks)
    return Tariff(
        tariff_id=tariff_id,
        utility=utility,
        customer_class=customer_class,
        effective_from=effective_from,
        vat_rate=Decimal(vat_rate),
        fixed_monthly=Decimal(fixed_monthly),
        blocks=tuple(
            Block(
                Decimal(item["from"]),
                None if item["to"] is None else Decimal(item["to"]),
                Decimal(item["rate"]),
            )
            for item in parsed
        ),
    )


TARIFF_COLUMNS = (
    "tariff_id, utility, customer_class, effective_from, vat_rate, fixed_monthly, blocks"
)


async def tariff_for(
    conn: AsyncConnection[Any], utility: str, customer_class: str, day: date
) -> Tariff:
    """The tariff version in force on ``day``."""
    cur = await conn.execute(
        f"SELECT {TARIFF_COLUMNS} FROM tariffs WHERE utility = %s AND customer_class = %s"
        " AND effective_from <= %s ORDER BY effective_from DESC LIMIT 1",
        (utility, customer_class, day),
    )
    row = await cur.fetchone()
    if row is None:
        raise NoTariffError(f"no {utility} tariff for class {customer_class!r} on {day}")
    return tariff_from_row(row)


async def month_to_date(conn: AsyncConnection[Any], meter_id: str, month: date) -> MonthToDate:
    """Units bought and fixed charges paid this month by sales that were not reversed."""
    cur = await conn.execute(
        "SELECT coalesce(sum(units_tenths), 0), coalesce(sum(fixed), 0) FROM sales"
        " WHERE meter_id = %s AND month = %s AND kind = 'sale' AND state <> 'reversed'",
        (meter_id, month),
    )
    row = await cur.fetchone()
    assert row is not None
    return MonthToDate(units_tenths=int(row[0]), fixed_paid=Decimal(row[1]))


async def free_units_issued(conn: AsyncConnection[Any], meter_id: str, month: date) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM vend_tokens WHERE meter_id = %s AND fbe_month = %s", (meter_id, month)
    )
    return await cur.fetchone() is not None


async def supply_group(conn: AsyncConnection[Any], sgc: str) -> SupplyGroup | None:
    cur = await conn.execute("SELECT sgc, krn, base_date FROM supply_groups WHERE sgc = %s", (sgc,))
    row = await cur.fetchone()
    return None if row is None else SupplyGroup(row[0], row[1], row[2])


async def ensure_vendor(conn: AsyncConnection[Any], vendor: str) -> None:
    await conn.execute(
        "INSERT INTO vendors (vendor) VALUES (%s) ON CONFLICT (vendor) DO NOTHING", (vendor,)
    )


async def float_balance(conn: AsyncConnection[Any], vendor: str, *, lock: bool) -> Decimal:
    """The vendor's float: the balance after its latest movement (0 without any).

    With ``lock`` the vendor row is locked first, so the balance read stays the latest until
    the transaction writes its own movement.
    """
    if lock:
        await conn.execute("SELECT 1 FROM vendors WHERE vendor = %s FOR UPDATE", (vendor,))
    cur = await conn.execute(
        "SELECT balance_after FROM float_movements WHERE vendor = %s"
        " ORDER BY movement_id DESC LIMIT 1",
        (vendor,),
    )
    row = await cur.fetchone()
    return Decimal(0) if row is None else Decimal(row[0])


async def move_float(
    conn: AsyncConnection[Any],
    vendor: str,
    kind: str,
    amount: Decimal,
    balance_before: Decimal,
    *,
    sale_id: int | None = None,
    note: str = "",
) -> Decimal:
    """Append a movement (the vendor row must be locked); returns the new balance."""
    balance = balance_before + amount
    await conn.execute(
        "INSERT INTO float_movements (vendor, kind, amount, balance_after, sale_id, note)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (vendor, kind, amount, balance, sale_id, note),
    )
    return balance


async def allocate_tid(conn: AsyncConnection[Any], meter_id: str, base_date: int, tid: int) -> int:
    """The next TID of the meter: ``tid`` (this minute) or one above the last one handed out.

    One row per meter and base date, updated in the sale's transaction: strictly increasing
    across processes and restarts.
    """
    cur = await conn.execute(
        "INSERT INTO meter_tids (meter_id, base_date, last_tid) VALUES (%s, %s, %s)"
        " ON CONFLICT (meter_id, base_date) DO UPDATE"
        " SET last_tid = greatest(meter_tids.last_tid + 1, excluded.last_tid)"
        " RETURNING last_tid",
        (meter_id, base_date, tid),
    )
    row = await cur.fetchone()
    assert row is not None
    allocated = int(row[0])
    if allocated >= TID_LIMIT:
        raise MeterNotConfiguredError(
            f"meter {meter_id} has no TID left under base date {base_date}: it needs a key change"
        )
    return allocated
