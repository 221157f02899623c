"""One sale inside its transaction: plan it (meter checks, tariff, month so far, free units,
key change), issue its tokens (key change, free basic units, credit, with their TIDs) and write
it (sale, tokens, float movement, arrears, audit) — returning the receipt bytes.

The caller (:class:`~gateway.vending.idempotency.Idempotency`) owns the transaction and its
idempotency record; nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

from psycopg import AsyncConnection

from gateway.vending import store
from gateway.vending.config import VendingConfig
from gateway.vending.errors import (
    AmountTooLargeError,
    AmountTooSmallError,
    InsufficientFloatError,
    KeyChangeUnavailableError,
    MeterNotConfiguredError,
    NoFreeUnitsDueError,
)
from gateway.vending.idempotency import Outcome, VendRequest
from gateway.vending.keys import DecoderKeySource
from gateway.vending.pricing import Debt, Quote, price
from gateway.vending.receipt import IssuedToken, dumps, money, receipt
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

__all__ = ["Draft", "SalePlan", "Sales"]

_ZERO: Final = Decimal(0)


@dataclass(frozen=True, slots=True)
class Draft:
    """A sale's tokens before their TIDs are allocated."""

    key: DecoderKey = field(repr=False)
    """The key the free basic and credit tokens go under (the new one after a key change)."""
    medium: Medium
    base: BaseDate
    minute: int
    """This minute's TID under ``base``: the lowest TID the tokens may get."""
    sections: tuple[IssuedToken, ...]
    """Key-change tokens, first on the receipt (none when no key change is due)."""
    wanted: tuple[tuple[str, int], ...]
    """``(kind, tenths)`` of each free basic or credit token, in receipt order."""
    new_key_json: dict[str, Any] | None

    def issue(self, tids: list[int]) -> list[IssuedToken]:
        """Every token of the receipt, given one TID per wanted token."""
        issued = list(self.sections)
        for (kind, tenths), tid in zip(self.wanted, tids, strict=True):
            record = TransferCredit(medium=self.medium, tenths=tenths, tid=tid, rnd=random_rnd())
            issued.append(IssuedToken(kind, encode(record, self.key), tenths, tid))
        return issued


@dataclass(frozen=True, slots=True)
class SalePlan:
    """What a sale of ``amount`` to a meter comes to, before anything is written."""

    meter: store.MeterContext
    tariff_id: int | None
    month: date
    quote: Quote | None
    free_due: bool
    target: StsData | None


def _medium(utility: str) -> Medium:
    return Medium.ELECTRICITY if utility == "electricity" else Medium.WATER


class Sales:
    """Plans, issues and writes sales with a decoder key source and the vending parameters."""

    def __init__(self, keys: DecoderKeySource, config: VendingConfig) -> None:
        self._keys = keys
        self._config = config

    async def plan(
        self,
        conn: AsyncConnection[Any],
        meter_id: str,
        amount: Decimal,
        now: datetime,
        *,
        lock: bool,
        want_credit: bool,
    ) -> SalePlan:
        """Check the meter and work out the sale; with ``lock`` the meter is held until the
        transaction ends. Refusals raise their :class:`VendingError`."""
        today = local_date(now, self._config.zone)
        month = month_of(today)
        reads = await store.request_sale(
            conn, meter_id, lock=lock, day=today, month=month, want_tariff=want_credit
        )
        meter = await store.meter_of(conn, reads)
        account = meter.account
        if want_credit:
            if amount > self._config.max_amount:
                raise AmountTooLargeError(f"the largest purchase is {self._config.max_amount}")
            if 0 < amount < self._config.min_amount:
                raise AmountTooSmallError(f"the smallest purchase is {self._config.min_amount}")
        context = await store.context_of(reads, meter, day=today)
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
        return SalePlan(meter, tariff_id, month, quote, free_due, target)

    async def decoder_key(
        self, conn: AsyncConnection[Any], meter: MeterNumber, sts: StsData
    ) -> DecoderKey:
        try:
            params = sts.params(meter)
        except TokenError as exc:
            raise MeterNotConfiguredError(
                f"the meter's key data are invalid: {exc.message}"
            ) from None
        return await self._keys.decoder_key(
            conn=conn, sgc=sts.sgc, krn=sts.krn, dkga=sts.dkga, params=params, ea=sts.ea
        )

    async def issue(
        self,
        conn: AsyncConnection[Any],
        request: VendRequest,
        *,
        now: datetime,
        meter_id: str,
        amount: Decimal,
        kind: str,
    ) -> Outcome:
        """Plan, issue and write one sale (``kind`` "sale" or "free_issue"); the receipt.

        In the caller's pipeline the sale waits for the database three times: for the meter's
        row, for what the sale reads (tariff, month so far, free units, supply group), and for
        the TIDs together with the float. Its writes are sent without waiting: they travel
        with the caller's audit record, response and COMMIT, and an error among them surfaces
        there.
        """
        plan = await self.plan(conn, meter_id, amount, now, lock=True, want_credit=kind == "sale")
        if kind == "free_issue" and not plan.free_due:
            raise NoFreeUnitsDueError(f"no free basic units are due to meter {meter_id} this month")
        meter = plan.meter
        draft = await self.draft(conn, plan, now)
        vendor = request.vendor
        base = int(draft.base)
        tids_asked = await store.request_tids(conn, meter_id, base, draft.minute, len(draft.wanted))
        float_asked = await store.request_float_lock(conn, vendor)
        tids = await store.tids_granted(tids_asked, meter_id, base, len(draft.wanted))
        balance, sale_id = await store.float_locked(conn, float_asked)
        issued = draft.issue(tids)
        quote = plan.quote
        free_tenths = sum(t.tenths or 0 for t in issued if t.kind == "free_basic")
        if amount > balance:
            raise InsufficientFloatError(
                f"the vendor float holds {money(balance)}; this sale needs {money(amount)}"
            )
        receipt_no = f"{local_date(now, self._config.zone):%Y%m%d}{sale_id:010d}"
        account_id = None if meter.account is None else meter.account.account_id
        balance_after = balance - amount
        body = dumps(
            receipt(
                receipt_no=receipt_no,
                request_id=request.request_id or "",
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
        await store.write_sale(
            conn,
            store.SaleRecord(
                sale_id=sale_id,
                receipt_no=receipt_no,
                vendor=vendor,
                request_id=request.request_id,
                kind=kind,
                meter_id=meter_id,
                account_id=account_id,
                utility=meter.utility,
                tariff_id=plan.tariff_id,
                month=plan.month,
                amount=amount,
                vat=_ZERO if quote is None else quote.vat,
                fixed=_ZERO if quote is None else quote.fixed,
                debt_recovered=_ZERO if quote is None else quote.debt_recovered,
                units_tenths=0 if quote is None else quote.tenths,
                free_tenths=free_tenths,
                issued_at=now,
                balance_after=balance_after,
            ),
            [(token.kind, token.token, token.tenths, token.tid) for token in issued],
            draft.new_key_json,
        )
        return Outcome(
            body,
            "issued",
            {
                "receipt_no": receipt_no,
                "amount": money(amount),
                "tokens": [token.kind for token in issued],
            },
        )

    async def draft(self, conn: AsyncConnection[Any], plan: SalePlan, now: datetime) -> Draft:
        """The sale's tokens up to their TIDs: the key change (when due) under the meter's
        key, then what free basic units (when due) and credit are to be issued under."""
        meter = plan.meter
        meter_id = meter.meter_id
        quote = plan.quote
        try:
            number = MeterNumber.from_drn(meter_id)
        except TokenError as exc:
            raise MeterNotConfiguredError(
                f"meter id {meter_id} is not an STS meter number: {exc.message}"
            ) from None
        key = await self.decoder_key(conn, number, meter.sts)
        sections: tuple[IssuedToken, ...] = ()
        new_key_json: dict[str, Any] | None = None
        base = BaseDate(meter.sts.base_date)
        if plan.target is not None:
            target = plan.target
            new_key = await self.decoder_key(conn, number, target)
            if new_key.key == key.key:
                raise KeyChangeUnavailableError(
                    f"meter {meter_id} needs a key change but supply group {target.sgc} has no "
                    "new key revision for it yet"
                )
            digits = key_change_tokens(
                key,
                new_key,
                key_type=target.key_type,
                krn=target.krn,
                ti=target.ti,
                sgc=target.sgc,
                ken=self._config.key_expiry,
                ro=1 if target.base_date != meter.sts.base_date else 0,
            )
            sections = tuple(IssuedToken("key_change", section, None, 0) for section in digits)
            new_key_json = target.as_json()
            key, base = new_key, BaseDate(target.base_date)
        free_tenths = self._config.free_tenths(meter.utility) if plan.free_due else 0
        credit_tenths = 0 if quote is None else quote.tenths
        wanted = tuple(
            (kind, t)
            for kind, t in (("free_basic", free_tenths), ("credit", credit_tenths))
            if t > 0
        )
        try:
            minute = tid_from_datetime(now, base)
        except TokenError as exc:
            raise MeterNotConfiguredError(
                f"meter {meter_id}'s base date {int(base)} gives no TID now: {exc.message}"
            ) from None
        return Draft(key, _medium(meter.utility), base, minute, sections, wanted, new_key_json)
