"""The vending service: quotes, credit vends, free issues, reprints, reversals, confirmations.

Each money-moving request runs in **one** database transaction that starts by inserting its
idempotency record ``(vendor, request_id)``; the sale, its tokens, the TIDs, the float movement,
the arrears and the stored response bytes commit together. So:

* a retry of a completed request finds the record and gets the stored bytes back;
* a retry of a request still in flight waits on the record's unique key until the first
  transaction ends (then gets its bytes), or gives up after ``retry_wait`` with ``in_progress``;
* a crash before the commit leaves nothing, one after it leaves the whole sale and its reply;
* a refusal rolls everything back (nothing is stored: a retry is judged afresh).

Sales of one meter serialise on the meter's vending row (month-to-date blocks, free units,
TIDs, arrears); float debits on the vendor's row. No in-process lock is involved.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway import audit
from gateway.errors import StorageError
from gateway.settings import Settings
from gateway.vending import store
from gateway.vending.errors import (
    AlreadyAcceptedError,
    AlreadyReversedError,
    AmountTooLargeError,
    AmountTooSmallError,
    InProgressError,
    InsufficientFloatError,
    InvalidAmountError,
    KeyChangeUnavailableError,
    MeterNotConfiguredError,
    NoFreeUnitsDueError,
    RequestIdReusedError,
    ReversalWindowClosedError,
    UnknownReceiptError,
    VendingError,
)
from gateway.vending.keys import DecoderKeySource
from gateway.vending.pricing import CENT, Debt, Quote, price
from gateway.vending.receipt import IssuedToken, dumps, money, receipt, rfc3339, units
from gateway.vending.rules import (
    StsData,
    free_units_due,
    key_change_target,
    local_date,
    month_of,
)
from tokens.codec import encode
from tokens.errors import TokenError
from tokens.keys import DecoderKey
from tokens.meter_number import MeterNumber
from tokens.records import Medium, TransferCredit
from tokens.tid import BaseDate, tid_from_datetime
from tokens.vending import key_change_tokens, random_rnd

__all__ = ["VendingConfig", "VendingService"]

log = logging.getLogger(__name__)

_ZERO: Final = Decimal(0)
_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class VendingConfig:
    """The municipality's vending parameters."""

    time_zone: str = "Africa/Johannesburg"
    """Calendar months (blocks, fixed charges, free units) are taken in this zone."""
    min_amount: Decimal = Decimal("5.00")
    max_amount: Decimal = Decimal("10000.00")
    free_electricity_kwh: Decimal = Decimal(100)
    free_water_kl: Decimal = Decimal(12)
    reversal_window: timedelta = timedelta(minutes=10)
    retry_wait: timedelta = timedelta(seconds=5)
    """How long a retry waits for the same request still in flight before ``in_progress``."""
    key_expiry: int = 255
    """KEN written into key changes (255: no expiry)."""
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", ZoneInfo(self.time_zone))

    @classmethod
    def from_settings(cls, settings: Settings) -> VendingConfig:
        """The deployment's vending parameters from the ``GATEWAY_VENDING_*`` settings."""
        return cls(
            time_zone=settings.vending_time_zone,
            min_amount=settings.vending_min_amount,
            max_amount=settings.vending_max_amount,
            free_electricity_kwh=settings.vending_free_electricity_kwh,
            free_water_kl=settings.vending_free_water_kl,
            reversal_window=timedelta(seconds=settings.vending_reversal_window_s),
        )

    def free_tenths(self, utility: str) -> int:
        allowance = self.free_electricity_kwh if utility == "electricity" else self.free_water_kl
        return int(allowance * 10)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a sale of ``amount`` to a meter comes to, before anything is written."""

    meter: store.MeterContext
    tariff_id: int | None
    month: Any
    quote: Quote | None
    free_due: bool
    target: StsData | None


def _fingerprint(operation: str, fields: dict[str, Any]) -> bytes:
    return hashlib.sha256(
        orjson.dumps({"operation": operation, **fields}, option=orjson.OPT_SORT_KEYS)
    ).digest()


def _check_amount(amount: Decimal) -> Decimal:
    if not amount.is_finite() or amount < 0:
        raise InvalidAmountError("amount must be a non-negative decimal number of rand")
    if amount != amount.quantize(CENT):
        raise InvalidAmountError("amount has more than two decimal places")
    return amount.quantize(CENT)


def _medium(utility: str) -> Medium:
    return Medium.ELECTRICITY if utility == "electricity" else Medium.WATER


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

    # -- helpers ---------------------------------------------------------------------------

    async def _plan(
        self,
        conn: AsyncConnection[Any],
        meter_id: str,
        amount: Decimal,
        now: datetime,
        *,
        lock: bool,
        want_credit: bool,
    ) -> _Plan:
        meter = await store.load_meter(conn, meter_id, lock=lock)
        today = local_date(now, self.config.zone)
        month = month_of(today)
        account = meter.account
        if want_credit:
            if amount > self.config.max_amount:
                raise AmountTooLargeError(f"the largest purchase is {self.config.max_amount}")
            if 0 < amount < self.config.min_amount:
                raise AmountTooSmallError(f"the smallest purchase is {self.config.min_amount}")
        context = await store.sale_context(
            conn, meter, day=today, month=month, want_tariff=want_credit
        )
        free_due = account is not None and free_units_due(
            indigent_from=account.indigent_from,
            indigent_to=account.indigent_to,
            on_register=account.on_register,
            today=today,
            issued_this_month=context.free_issued,
        )
        quote = None
        tariff_id = None
        if context.tariff is not None:
            if amount == 0 and not free_due:
                raise AmountTooSmallError(
                    "an amount of 0 buys only free basic units, and none are due this month"
                )
            tariff_id = context.tariff.tariff_id
            debt = Debt() if account is None else Debt(account.arrears, account.debt_recovery_share)
            quote = price(amount, context.tariff, context.month, debt)
        target = key_change_target(
            meter.sts, context.group, target_sgc=meter.target_sgc, target_ti=meter.target_ti
        )
        return _Plan(meter, tariff_id, month, quote, free_due, target)

    async def _decoder_key(self, meter: MeterNumber, sts: StsData) -> DecoderKey:
        try:
            params = sts.params(meter)
        except TokenError as exc:
            raise MeterNotConfiguredError(
                f"the meter's key data are invalid: {exc.message}"
            ) from None
        return await self._keys.decoder_key(
            sgc=sts.sgc, krn=sts.krn, dkga=sts.dkga, params=params, ea=sts.ea
        )

    async def _idempotent(
        self,
        vendor: str,
        request_id: str,
        operation: str,
        fields: dict[str, Any],
        work: Callable[[AsyncConnection[Any]], Awaitable[bytes]],
    ) -> bytes:
        fingerprint = _fingerprint(operation, fields)
        for attempt in range(_ATTEMPTS):
            try:
                return await self._attempt(vendor, request_id, operation, fingerprint, work)
            except (psycopg.errors.TransactionRollback, psycopg.errors.UniqueViolation) as exc:
                # A deadlock, a serialisation failure or a lost race on a unique key rolled
                # the whole transaction back: running it again is safe and decides afresh.
                if attempt == _ATTEMPTS - 1:
                    raise StorageError(
                        f"vending transaction kept conflicting: {type(exc).__name__}"
                    ) from exc
                log.info("vending transaction retried after %s", type(exc).__name__)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        vendor: str,
        request_id: str,
        operation: str,
        fingerprint: bytes,
        work: Callable[[AsyncConnection[Any]], Awaitable[bytes]],
    ) -> bytes:
        wait_ms = int(self.config.retry_wait.total_seconds() * 1000)
        try:
            async with self.pool.connection() as conn, conn.transaction():
                async with conn.pipeline():
                    await conn.execute(f"SET LOCAL lock_timeout = {wait_ms}")
                    cur = await conn.execute(
                        "INSERT INTO vend_requests (vendor, request_id, operation, body_hash,"
                        " status, response) VALUES (%s, %s, %s, %s, 0, '')"
                        " ON CONFLICT DO NOTHING",
                        (vendor, request_id, operation, fingerprint),
                    )
                if cur.rowcount == 0:
                    cur = await conn.execute(
                        "SELECT body_hash, response FROM vend_requests"
                        " WHERE vendor = %s AND request_id = %s",
                        (vendor, request_id),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    if bytes(row[0]) != fingerprint:
                        raise RequestIdReusedError(
                            f"request_id {request_id!r} was already used for a different request"
                        )
                    return bytes(row[1])
                body = await work(conn)
                await conn.execute(
                    "UPDATE vend_requests SET status = 200, response = %s"
                    " WHERE vendor = %s AND request_id = %s",
                    (body, vendor, request_id),
                )
                return body
        except psycopg.errors.LockNotAvailable as exc:
            raise InProgressError(
                f"request {request_id!r} is still being processed; retry it shortly"
            ) from exc
        except (psycopg.errors.TransactionRollback, psycopg.errors.UniqueViolation):
            raise
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StorageError(f"vending database unavailable: {type(exc).__name__}") from exc

    async def _audit_refusal(
        self, vendor: str, action: str, obj: str, request_id: str | None, error: VendingError
    ) -> None:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await audit.record(
                    conn,
                    actor=vendor,
                    action=action,
                    object=obj,
                    outcome=error.code,
                    source="vending",
                    request_id=request_id,
                    detail={"message": error.message},
                )
        except (psycopg.Error, PoolTimeout):
            log.warning("could not audit a refused %s", action, extra={"vendor": vendor})

    # -- operations ------------------------------------------------------------------------

    async def quote(self, vendor: str, meter_id: str, amount: Decimal) -> dict[str, Any]:
        """Trial vend: what ``amount`` buys now. No token, no charge, nothing written."""
        amount = _check_amount(amount)
        now = self._clock()
        async with self.pool.connection() as conn, conn.transaction():
            plan = await self._plan(conn, meter_id, amount, now, lock=False, want_credit=True)
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

    async def credit(self, vendor: str, request_id: str, meter_id: str, amount: Decimal) -> bytes:
        """Credit vend: the receipt bytes (stored; a retry gets the same bytes)."""
        amount = _check_amount(amount)
        fields = {"meter": meter_id, "amount": money(amount)}

        async def work(conn: AsyncConnection[Any]) -> bytes:
            return await self._issue(conn, vendor, request_id, meter_id, amount, kind="sale")

        try:
            return await self._idempotent(vendor, request_id, "credit", fields, work)
        except VendingError as exc:
            await self._audit_refusal(vendor, "vend.credit", f"meter:{meter_id}", request_id, exc)
            raise

    async def free_issue(self, vendor: str, request_id: str, meter_id: str) -> bytes:
        """This month's free basic units without a purchase (``no_free_units_due`` if none)."""

        async def work(conn: AsyncConnection[Any]) -> bytes:
            return await self._issue(conn, vendor, request_id, meter_id, _ZERO, kind="free_issue")

        try:
            return await self._idempotent(
                vendor, request_id, "free_issue", {"meter": meter_id}, work
            )
        except VendingError as exc:
            await self._audit_refusal(
                vendor, "vend.free_issue", f"meter:{meter_id}", request_id, exc
            )
            raise

    async def _issue(
        self,
        conn: AsyncConnection[Any],
        vendor: str,
        request_id: str,
        meter_id: str,
        amount: Decimal,
        *,
        kind: str,
    ) -> bytes:
        now = self._clock()
        await store.ensure_vendor(conn, vendor)
        plan = await self._plan(conn, meter_id, amount, now, lock=True, want_credit=kind == "sale")
        if kind == "free_issue" and not plan.free_due:
            raise NoFreeUnitsDueError(f"no free basic units are due to meter {meter_id} this month")
        meter = plan.meter
        issued, new_key_json = await self._tokens(conn, plan, now)
        quote = plan.quote
        free_tenths = sum(t.tenths or 0 for t in issued if t.kind == "free_basic")
        balance, sale_id = await store.lock_float_for_sale(conn, vendor)
        if amount > balance:
            raise InsufficientFloatError(
                f"the vendor float holds {money(balance)}; this sale needs {money(amount)}"
            )
        receipt_no = f"{local_date(now, self.config.zone):%Y%m%d}{sale_id:010d}"
        account_id = None if meter.account is None else meter.account.account_id
        balance_after = balance - amount
        body = dumps(
            receipt(
                receipt_no=receipt_no,
                request_id=request_id,
                meter=meter_id,
                utility=meter.utility,
                state="issued",
                tokens=issued,
                amount=amount,
                tenths=0 if quote is None else quote.tenths,
                vat=_ZERO if quote is None else quote.vat,
                fixed=_ZERO if quote is None else quote.fixed,
                debt_recovered=_ZERO if quote is None else quote.debt_recovered,
                blocks=() if quote is None else quote.blocks,
                float_balance=balance_after,
                issued_at=now,
            )
        )
        # The writes go out together: one round trip to the database.
        async with conn.pipeline():
            await conn.execute(
                "INSERT INTO sales (sale_id, receipt_no, vendor, request_id, kind, meter_id,"
                " account_id, utility, tariff_id, month, amount, vat, fixed, debt_recovered,"
                " units_tenths, free_tenths, issued_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    sale_id,
                    receipt_no,
                    vendor,
                    request_id,
                    kind,
                    meter_id,
                    account_id,
                    meter.utility,
                    plan.tariff_id,
                    plan.month,
                    amount,
                    _ZERO if quote is None else quote.vat,
                    _ZERO if quote is None else quote.fixed,
                    _ZERO if quote is None else quote.debt_recovered,
                    0 if quote is None else quote.tenths,
                    free_tenths,
                    now,
                ),
            )
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO vend_tokens (sale_id, seq, meter_id, kind, token, tenths, tid,"
                    " fbe_month, new_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            sale_id,
                            seq,
                            meter_id,
                            token.kind,
                            token.token,
                            token.tenths,
                            token.tid,
                            plan.month if token.kind == "free_basic" else None,
                            Jsonb(new_key_json) if token.kind == "key_change" else None,
                        )
                        for seq, token in enumerate(issued, start=1)
                    ],
                )
            if amount > 0:
                await store.move_float(
                    conn, vendor, "sale", -amount, balance, sale_id=sale_id, note=receipt_no
                )
            if quote is not None and quote.debt_recovered > 0 and account_id is not None:
                await conn.execute(
                    "UPDATE accounts SET arrears = arrears - %s, updated_at = now()"
                    " WHERE account_id = %s",
                    (quote.debt_recovered, account_id),
                )
        await audit.record(
            conn,
            actor=vendor,
            action="vend.credit" if kind == "sale" else "vend.free_issue",
            object=f"meter:{meter_id}",
            outcome="issued",
            source="vending",
            request_id=request_id,
            detail={
                "receipt_no": receipt_no,
                "amount": money(amount),
                "tokens": [token.kind for token in issued],
            },
        )
        return body

    async def _tokens(
        self, conn: AsyncConnection[Any], plan: _Plan, now: datetime
    ) -> tuple[list[IssuedToken], dict[str, Any] | None]:
        """Key change (when due), free basic units (when due), then credit, with their TIDs."""
        meter = plan.meter
        meter_id = meter.meter_id
        quote = plan.quote
        try:
            number = MeterNumber.from_drn(meter_id)
        except TokenError as exc:
            raise MeterNotConfiguredError(
                f"meter id {meter_id} is not an STS meter number: {exc.message}"
            ) from None
        key = await self._decoder_key(number, meter.sts)
        issued: list[IssuedToken] = []
        new_key_json: dict[str, Any] | None = None
        base = BaseDate(meter.sts.base_date)
        if plan.target is not None:
            target = plan.target
            new_key = await self._decoder_key(number, target)
            if new_key.key == key.key:
                raise KeyChangeUnavailableError(
                    f"meter {meter_id} needs a key change but supply group {target.sgc} has no "
                    "new key revision for it yet"
                )
            sections = key_change_tokens(
                key,
                new_key,
                key_type=target.key_type,
                krn=target.krn,
                ti=target.ti,
                sgc=target.sgc,
                ken=self.config.key_expiry,
                ro=1 if target.base_date != meter.sts.base_date else 0,
            )
            issued.extend(IssuedToken("key_change", digits, None, 0) for digits in sections)
            new_key_json = target.as_json()
            key, base = new_key, BaseDate(target.base_date)
        medium = _medium(meter.utility)
        free_tenths = self.config.free_tenths(meter.utility) if plan.free_due else 0
        credit_tenths = 0 if quote is None else quote.tenths
        wanted = [
            (kind, t)
            for kind, t in (("free_basic", free_tenths), ("credit", credit_tenths))
            if t > 0
        ]
        tids = await store.allocate_tids(
            conn, meter_id, int(base), tid_from_datetime(now, base), len(wanted)
        )
        for (kind, tenths), tid in zip(wanted, tids, strict=True):
            record = TransferCredit(medium=medium, tenths=tenths, tid=tid, rnd=random_rnd())
            issued.append(IssuedToken(kind, encode(record, key), tenths, tid))
        return issued, new_key_json

    async def reprint(
        self,
        vendor: str,
        *,
        receipt_no: str | None,
        meter_id: str | None,
        last: int,
        request_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Original receipts, marked ``reprint`` with their current state; never a new token."""
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
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
            if not rows:
                error = UnknownReceiptError(
                    f"no receipt {receipt_no}"
                    if receipt_no is not None
                    else f"no sale to meter {meter_id} by this vendor"
                )
                raise error
            await audit.record(
                conn,
                actor=vendor,
                action="vend.reprint",
                object=f"receipt:{receipt_no}" if receipt_no else f"meter:{meter_id}",
                outcome="reprinted",
                source="vending",
                request_id=request_id,
                detail={"count": len(rows)},
            )
        receipts = []
        for response, state in rows:
            document = orjson.loads(bytes(response))
            document["reprint"] = True
            document["state"] = state
            receipts.append(document)
        return receipts

    async def reverse(self, vendor: str, request_id: str, receipt_no: str) -> bytes:
        """Reversal advice: refund the float and mark the sale reversed, while still safe."""

        async def work(conn: AsyncConnection[Any]) -> bytes:
            now = self._clock()
            cur = await conn.execute(
                "SELECT sale_id, state, amount, issued_at, confirmed_at, debt_recovered,"
                " account_id, reversed_at FROM sales WHERE vendor = %s AND receipt_no = %s"
                " FOR UPDATE",
                (vendor, receipt_no),
            )
            row = await cur.fetchone()
            if row is None:
                raise UnknownReceiptError(f"no receipt {receipt_no} for this vendor")
            sale_id, state, amount, issued_at, confirmed_at, recovered, account_id, _ = row
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
            await conn.execute(
                "UPDATE sales SET state = 'reversed', reversed_at = %s WHERE sale_id = %s",
                (now, sale_id),
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
            await audit.record(
                conn,
                actor=vendor,
                action="vend.reverse",
                object=f"receipt:{receipt_no}",
                outcome="reversed",
                source="vending",
                request_id=request_id,
                detail={"amount": money(amount)},
            )
            return dumps(
                {
                    "receipt_no": receipt_no,
                    "request_id": request_id,
                    "state": "reversed",
                    "amount": money(amount),
                    "float_balance": money(balance),
                    "reversed_at": rfc3339(now),
                }
            )

        try:
            return await self._idempotent(
                vendor, request_id, "reverse", {"receipt_no": receipt_no}, work
            )
        except VendingError as exc:
            await self._audit_refusal(
                vendor, "vend.reverse", f"receipt:{receipt_no}", request_id, exc
            )
            raise

    async def confirm(self, vendor: str, request_id: str, receipt_no: str) -> bytes:
        """The customer got the receipt: closes the reversal window."""

        async def work(conn: AsyncConnection[Any]) -> bytes:
            now = self._clock()
            cur = await conn.execute(
                "UPDATE sales SET confirmed_at = coalesce(confirmed_at, %s)"
                " WHERE vendor = %s AND receipt_no = %s RETURNING state, confirmed_at",
                (now, vendor, receipt_no),
            )
            row = await cur.fetchone()
            if row is None:
                raise UnknownReceiptError(f"no receipt {receipt_no} for this vendor")
            await audit.record(
                conn,
                actor=vendor,
                action="vend.confirm",
                object=f"receipt:{receipt_no}",
                outcome="confirmed",
                source="vending",
                request_id=request_id,
            )
            return dumps(
                {
                    "receipt_no": receipt_no,
                    "request_id": request_id,
                    "state": row[0],
                    "confirmed_at": rfc3339(row[1]),
                }
            )

        try:
            return await self._idempotent(
                vendor, request_id, "confirm", {"receipt_no": receipt_no}, work
            )
        except VendingError as exc:
            await self._audit_refusal(
                vendor, "vend.confirm", f"receipt:{receipt_no}", request_id, exc
            )
            raise

    async def float_balance(self, vendor: str) -> str:
        """The vendor's float balance as a decimal string."""
        async with self.pool.connection() as conn, conn.transaction():
            return money(await store.float_balance(conn, vendor, lock=False))

    async def transactions(self, vendor: str, *, after: int | None, limit: int) -> dict[str, Any]:
        """The vendor's own sales and free issues, oldest first, keyset-paged by ``after``."""
        async with self.pool.connection() as conn, conn.transaction():
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
