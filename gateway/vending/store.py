"""SQL of the vending service: reading a meter's vending context, tariffs, the month so far,
float ledgers and the TID allocator. Every function runs in the caller's transaction.

A sale's statements are asked for (``request_…``) and read (``…_of``, ``…_granted``,
``…_locked``) in separate steps, so that in pipeline mode the statements asked for together
travel to the database together and the sale waits once for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Jsonb

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
    "SaleReads",
    "SaleRecord",
    "allocate_tids",
    "context_of",
    "ensure_vendor",
    "float_balance",
    "float_locked",
    "lock_float_for_sale",
    "meter_of",
    "move_float",
    "request_float_lock",
    "request_sale",
    "request_tids",
    "tariff_from_row",
    "tids_granted",
    "write_sale",
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
_LOCK_METER: Final = (
    f"SELECT {_METER_COLUMNS} FROM meter_vending v JOIN meters m USING (meter_id)"
    " LEFT JOIN accounts a USING (account_id) WHERE v.meter_id = %s FOR UPDATE OF v"
)
_READ_METER: Final = (
    f"SELECT {_METER_COLUMNS} FROM meters m LEFT JOIN meter_vending v USING (meter_id)"
    " LEFT JOIN accounts a USING (account_id) WHERE m.meter_id = %s"
)


@dataclass(frozen=True, slots=True)
class SaleContext:
    """Everything a sale reads besides the meter."""

    tariff: Tariff | None
    month: MonthToDate
    free_issued: bool
    group: SupplyGroup | None


# What a sale reads besides the meter, in one statement and from the meter id alone, so that
# it can follow the meter's lock without waiting for the meter's row: the tariff in force for
# the meter's utility and its account's customer class, the month so far (reversed sales
# excluded), whether free units went out this month, and the supply group the meter is in or
# is moving to. Sent after the lock, it reads what the sale before it committed.
_CONTEXT: Final = (
    "SELECT t.tariff_id, t.utility, t.customer_class, t.effective_from, t.vat_rate,"
    " t.fixed_monthly, t.blocks, md.units, md.fixed, fb.issued, g.sgc, g.krn, g.base_date"
    " FROM meters m"
    " LEFT JOIN meter_vending v ON v.meter_id = m.meter_id"
    " LEFT JOIN accounts a ON a.account_id = v.account_id"
    " LEFT JOIN LATERAL (SELECT tariff_id, utility, customer_class, effective_from, vat_rate,"
    "  fixed_monthly, blocks FROM tariffs WHERE %(want_tariff)s AND utility = m.utility"
    "  AND customer_class = coalesce(a.customer_class, 'domestic')"
    "  AND effective_from <= %(day)s ORDER BY effective_from DESC LIMIT 1) t ON true"
    " CROSS JOIN LATERAL (SELECT coalesce(sum(units_tenths), 0) AS units,"
    "  coalesce(sum(fixed), 0) AS fixed FROM sales WHERE meter_id = m.meter_id"
    "  AND month = %(month)s AND kind = 'sale' AND state <> 'reversed') md"
    " CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM vend_tokens WHERE meter_id = m.meter_id"
    "  AND fbe_month = %(month)s) AS issued) fb"
    " LEFT JOIN supply_groups g ON g.sgc = coalesce(v.target_sgc, v.sgc)"
    " WHERE m.meter_id = %(meter)s"
)


@dataclass(frozen=True, slots=True)
class SaleReads:
    """A sale's reads, asked for (:func:`request_sale`) and not yet waited for."""

    meter_id: str
    lock: bool
    want_tariff: bool
    meter: AsyncCursor[Any]
    context: AsyncCursor[Any]


async def request_sale(
    conn: AsyncConnection[Any],
    meter_id: str,
    *,
    lock: bool,
    day: date,
    month: date,
    want_tariff: bool,
) -> SaleReads:
    """Ask for the meter's vending row (locked until the transaction ends with ``lock``: one
    sale per meter at a time) and for the sale's context, in one round trip in pipeline mode.
    Read them with :func:`meter_of` and :func:`context_of`."""
    meter = await conn.execute(_LOCK_METER if lock else _READ_METER, (meter_id,))
    context = await conn.execute(
        _CONTEXT, {"meter": meter_id, "day": day, "month": month, "want_tariff": want_tariff}
    )
    return SaleReads(meter_id, lock, want_tariff, meter, context)


async def meter_of(conn: AsyncConnection[Any], reads: SaleReads) -> MeterContext:
    """The meter's vending context, checked for sale (refusals raise).

    With ``lock`` its account is locked too when it is in arrears (debt recovery updates it).
    """
    meter_id, lock = reads.meter_id, reads.lock
    row = await reads.meter.fetchone()
    if row is None and lock:  # not vendable: find out why
        cur = await conn.execute(_READ_METER, (meter_id,))
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


async def context_of(reads: SaleReads, meter: MeterContext, *, day: date) -> SaleContext:
    """The sale's context (:class:`NoTariffError` when a tariff was wanted and none is in
    force)."""
    row = await reads.context.fetchone()
    assert row is not None  # the meter exists: meter_of checked it
    tariff = None if row[0] is None else tariff_from_row(row[0:7])
    if tariff is None and reads.want_tariff:
        raise NoTariffError(
            f"no {meter.utility} tariff for class {meter.customer_class!r} on {day}"
        )
    return SaleContext(
        tariff=tariff,
        month=MonthToDate(units_tenths=int(row[7]), fixed_paid=Decimal(row[8])),
        free_issued=bool(row[9]),
        group=None if row[10] is None else SupplyGroup(row[10], row[11], row[12]),
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


@dataclass(frozen=True, slots=True)
class SaleRecord:
    """A sale as :func:`write_sale` stores it."""

    sale_id: int
    receipt_no: str
    vendor: str
    request_id: str | None
    kind: str
    meter_id: str
    account_id: str | None
    utility: str
    tariff_id: int | None
    month: date
    amount: Decimal
    vat: Decimal
    fixed: Decimal
    debt_recovered: Decimal
    units_tenths: int
    free_tenths: int
    issued_at: datetime
    balance_after: Decimal
    """The vendor's float after the sale."""


# The sale, its tokens (from arrays, in receipt order), the float movement and the arrears
# recovered: one statement. Foreign keys are checked at its end, when the sale row is there.
_WRITE_SALE: Final = (
    "WITH sale AS (INSERT INTO sales (sale_id, receipt_no, vendor, request_id, kind, meter_id,"
    "  account_id, utility, tariff_id, month, amount, vat, fixed, debt_recovered, units_tenths,"
    "  free_tenths, issued_at) VALUES (%(sale_id)s, %(receipt_no)s, %(vendor)s, %(request_id)s,"
    "  %(kind)s, %(meter_id)s, %(account_id)s, %(utility)s, %(tariff_id)s, %(month)s,"
    "  %(amount)s, %(vat)s, %(fixed)s, %(debt_recovered)s, %(units_tenths)s, %(free_tenths)s,"
    "  %(issued_at)s)),"
    " tokens AS (INSERT INTO vend_tokens (sale_id, seq, meter_id, kind, token, tenths, tid,"
    "  fbe_month, new_key) SELECT %(sale_id)s, t.seq, %(meter_id)s, t.kind, t.token, t.tenths,"
    "  t.tid, CASE WHEN t.kind = 'free_basic' THEN %(month)s::date END,"
    "  CASE WHEN t.kind = 'key_change' THEN %(new_key)s::jsonb END"
    "  FROM unnest(%(token_kinds)s::text[], %(tokens)s::text[], %(token_tenths)s::int[],"
    "  %(tids)s::int[]) WITH ORDINALITY AS t(kind, token, tenths, tid, seq)),"
    " movement AS (INSERT INTO float_movements (vendor, kind, amount, balance_after, sale_id,"
    "  note) SELECT %(vendor)s, 'sale', -%(amount)s::numeric, %(balance_after)s, %(sale_id)s,"
    "  %(receipt_no)s WHERE %(amount)s::numeric > 0)"
    " UPDATE accounts SET arrears = arrears - %(debt_recovered)s, updated_at = now()"
    " WHERE account_id = %(account_id)s AND %(debt_recovered)s::numeric > 0"
)


async def write_sale(
    conn: AsyncConnection[Any],
    sale: SaleRecord,
    tokens: Sequence[tuple[str, str, int | None, int]],
    new_key: dict[str, Any] | None,
) -> None:
    """Store a sale with its ``tokens`` (kind, digits, tenths, TID; a key change's new key
    data in ``new_key``), debit the float and take the arrears recovered. The vendor's float
    and, with arrears, the account must be locked by this transaction. Nothing is waited for:
    in pipeline mode an error surfaces at the next read or the commit."""
    params = {name: getattr(sale, name) for name in SaleRecord.__slots__}
    params.update(
        token_kinds=[t[0] for t in tokens],
        tokens=[t[1] for t in tokens],
        token_tenths=[t[2] for t in tokens],
        tids=[t[3] for t in tokens],
        new_key=None if new_key is None else Jsonb(new_key),
    )
    await conn.execute(_WRITE_SALE, params)


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
