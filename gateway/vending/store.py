"""SQL of the vending service: reading a meter's vending context, tariffs, the month so far,
float ledgers and the TID allocator. Every function runs in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any, Final

import orjson
from psycopg import AsyncConnection, AsyncCursor

from gateway.vending.errors import (
    MeterBlockedError,
    MeterNotConfiguredError,
    NoTariffError,
    NotPrepaidError,
    UnknownMeterError,
    UnknownVendorError,
)
from gateway.vending.pricing import Block, MonthToDate, Tariff
from gateway.vending.rules import StsData, SupplyGroup
from tokens.tid import TID_LIMIT

__all__ = [
    "Account",
    "FloatLock",
    "MeterContext",
    "SaleContext",
    "allocate_tids",
    "ensure_vendor",
    "float_balance",
    "float_locked",
    "load_meter",
    "lock_float_for_sale",
    "move_float",
    "request_float_lock",
    "request_tids",
    "sale_context",
    "tariff_from_row",
    "tids_granted",
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


_METER_COLUMNS = (
    "m.utility, m.payment, v.sgc, v.krn, v.ti, v.key_type, v.base_date, v.ea, v.dkga,"
    " v.target_sgc, v.target_ti, v.blocked_reason, a.account_id, a.customer_class,"
    " a.indigent_from, a.indigent_to, a.arrears, a.debt_recovery_share"
)


async def load_meter(conn: AsyncConnection[Any], meter_id: str, *, lock: bool) -> MeterContext:
    """The meter's vending context, checked for sale.

    With ``lock`` the meter's vending row is locked until the transaction ends (one sale per
    meter at a time), and so is its account when it is in arrears (debt recovery updates it).
    """
    row = None
    if lock:
        cur = await conn.execute(
            f"SELECT {_METER_COLUMNS} FROM meter_vending v JOIN meters m USING (meter_id)"
            " LEFT JOIN accounts a USING (account_id) WHERE v.meter_id = %s FOR UPDATE OF v",
            (meter_id,),
        )
        row = await cur.fetchone()
    if row is None:
        cur = await conn.execute(
            f"SELECT {_METER_COLUMNS} FROM meters m LEFT JOIN meter_vending v USING (meter_id)"
            " LEFT JOIN accounts a USING (account_id) WHERE m.meter_id = %s",
            (meter_id,),
        )
        row = await cur.fetchone()
        if row is None:
            raise UnknownMeterError(f"meter {meter_id} is not known")
    utility, payment = row[0], row[1]
    if payment != "prepaid":
        raise NotPrepaidError(f"meter {meter_id} is not a prepaid meter")
    if row[11] is not None:
        raise MeterBlockedError(f"meter {meter_id} is blocked: {row[11]}")
    if row[2] is None or utility not in ("electricity", "water"):
        raise MeterNotConfiguredError(
            f"meter {meter_id} has no STS key data on record; it cannot be vended yet"
        )
    sts = StsData(
        sgc=row[2], krn=row[3], ti=row[4], key_type=row[5], base_date=row[6], ea=row[7], dkga=row[8]
    )
    account = None
    if row[12] is not None:
        account = Account(*row[12:18])
        if lock and account.arrears > 0:
            cur = await conn.execute(
                "SELECT arrears, debt_recovery_share FROM accounts WHERE account_id = %s"
                " FOR UPDATE",
                (account.account_id,),
            )
            locked = await cur.fetchone()
            assert locked is not None
            account = replace(account, arrears=locked[0], debt_recovery_share=locked[1])
    return MeterContext(meter_id, utility, sts, row[9], row[10], account)


@dataclass(frozen=True, slots=True)
class SaleContext:
    """Everything a sale reads besides the meter, fetched in one round trip."""

    tariff: Tariff | None
    month: MonthToDate
    free_issued: bool
    group: SupplyGroup | None


async def sale_context(
    conn: AsyncConnection[Any],
    meter: MeterContext,
    *,
    day: date,
    month: date,
    want_tariff: bool,
) -> SaleContext:
    """The tariff in force, the month so far, whether free units went out, the supply group."""
    async with conn.pipeline():
        tariff_cur = (
            await conn.execute(
                f"SELECT {TARIFF_COLUMNS} FROM tariffs WHERE utility = %s"
                " AND customer_class = %s AND effective_from <= %s"
                " ORDER BY effective_from DESC LIMIT 1",
                (meter.utility, meter.customer_class, day),
            )
            if want_tariff
            else None
        )
        month_cur = await conn.execute(
            "SELECT coalesce(sum(units_tenths), 0), coalesce(sum(fixed), 0) FROM sales"
            " WHERE meter_id = %s AND month = %s AND kind = 'sale' AND state <> 'reversed'",
            (meter.meter_id, month),
        )
        free_cur = await conn.execute(
            "SELECT 1 FROM vend_tokens WHERE meter_id = %s AND fbe_month = %s",
            (meter.meter_id, month),
        )
        group_cur = await conn.execute(
            "SELECT sgc, krn, base_date FROM supply_groups WHERE sgc = %s",
            (meter.target_sgc or meter.sts.sgc,),
        )
    tariff = None
    if tariff_cur is not None:
        tariff_row = await tariff_cur.fetchone()
        if tariff_row is None:
            raise NoTariffError(
                f"no {meter.utility} tariff for class {meter.customer_class!r} on {day}"
            )
        tariff = tariff_from_row(tariff_row)
    month_row = await month_cur.fetchone()
    assert month_row is not None
    group_row = await group_cur.fetchone()
    return SaleContext(
        tariff=tariff,
        month=MonthToDate(units_tenths=int(month_row[0]), fixed_paid=Decimal(month_row[1])),
        free_issued=await free_cur.fetchone() is not None,
        group=None if group_row is None else SupplyGroup(*group_row),
    )


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


async def ensure_vendor(conn: AsyncConnection[Any], vendor: str) -> None:
    """Make sure the vendor has a float row; :class:`UnknownVendorError` unless ``vendor`` is
    an enabled principal with the vendor role (a float is never opened for a mistyped name)."""
    cur = await conn.execute(
        "SELECT 1 FROM principals WHERE name = %s AND role = 'vendor' AND disabled_at IS NULL",
        (vendor,),
    )
    if await cur.fetchone() is None:
        raise UnknownVendorError(f"no enabled vendor named {vendor!r}")
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


_FLOAT_LOCK: Final = (
    "SELECT nextval(pg_get_serial_sequence('sales', 'sale_id')) FROM vendors WHERE vendor = %s"
    " FOR UPDATE"
)
_FLOAT_BALANCE: Final = (
    "SELECT balance_after FROM float_movements WHERE vendor = %s ORDER BY movement_id DESC LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class FloatLock:
    """The float lock of a sale, asked for (:func:`request_float_lock`), not yet read."""

    vendor: str
    lock: AsyncCursor[Any]
    balance: AsyncCursor[Any]


async def request_float_lock(conn: AsyncConnection[Any], vendor: str) -> FloatLock:
    """Ask for the vendor's float lock, its balance and the id of the sale about to be written
    (read them with :func:`float_locked`). In pipeline mode nothing is waited for yet, so the
    request travels with whatever else the sale sends before it reads.

    The balance is read by a statement of its own *after* the lock is granted: under READ
    COMMITTED only a statement started after the lock sees the movement of the transaction
    that held it.
    """
    lock = await conn.execute(_FLOAT_LOCK, (vendor,))
    balance = await conn.execute(_FLOAT_BALANCE, (vendor,))
    return FloatLock(vendor, lock, balance)


async def float_locked(conn: AsyncConnection[Any], asked: FloatLock) -> tuple[Decimal, int]:
    """The locked float's balance and the new sale's id (creating the vendor on its first
    sale, which asks again)."""
    locked = await asked.lock.fetchone()
    if locked is None:
        await ensure_vendor(conn, asked.vendor)
        return await lock_float_for_sale(conn, asked.vendor)
    row = await asked.balance.fetchone()
    return (Decimal(0) if row is None else Decimal(row[0])), int(locked[0])


async def lock_float_for_sale(conn: AsyncConnection[Any], vendor: str) -> tuple[Decimal, int]:
    """Lock the vendor's float (which must exist); its balance and the id of the sale about to
    be written."""
    async with conn.pipeline():
        lock = await conn.execute(_FLOAT_LOCK, (vendor,))
        balance = await conn.execute(_FLOAT_BALANCE, (vendor,))
    locked = await lock.fetchone()
    if locked is None:
        raise AssertionError("unreachable: the vendor row exists after ensure_vendor")
    row = await balance.fetchone()
    return (Decimal(0) if row is None else Decimal(row[0])), int(locked[0])


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


async def request_tids(
    conn: AsyncConnection[Any], meter_id: str, base_date: int, tid: int, count: int
) -> AsyncCursor[Any] | None:
    """Ask for the meter's next ``count`` TIDs, from ``tid`` (this minute) or above the last
    one; read them with :func:`tids_granted`. In pipeline mode nothing is waited for yet.

    One row per meter and base date, updated in the sale's transaction: strictly increasing
    across processes and restarts, even for several tokens in one minute.
    """
    if count == 0:
        return None
    return await conn.execute(
        "INSERT INTO meter_tids (meter_id, base_date, last_tid) VALUES (%s, %s, %s)"
        " ON CONFLICT (meter_id, base_date) DO UPDATE"
        " SET last_tid = greatest(meter_tids.last_tid + %s, excluded.last_tid)"
        " RETURNING last_tid",
        (meter_id, base_date, tid + count - 1, count),
    )


async def tids_granted(
    asked: AsyncCursor[Any] | None, meter_id: str, base_date: int, count: int
) -> list[int]:
    """The TIDs :func:`request_tids` allocated, lowest first."""
    if asked is None:
        return []
    row = await asked.fetchone()
    assert row is not None
    last = int(row[0])
    if last >= TID_LIMIT:
        raise MeterNotConfiguredError(
            f"meter {meter_id} has no TID left under base date {base_date}: it needs a key change"
        )
    return list(range(last - count + 1, last + 1))


async def allocate_tids(
    conn: AsyncConnection[Any], meter_id: str, base_date: int, tid: int, count: int
) -> list[int]:
    """The meter's next ``count`` TIDs (:func:`request_tids` and :func:`tids_granted`)."""
    asked = await request_tids(conn, meter_id, base_date, tid, count)
    return await tids_granted(asked, meter_id, base_date, count)
