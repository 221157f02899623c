"""Account, arrears and payment records from the billing system, as validated values.

The same parsers serve the bulk files (``gateway import accounts|arrears|payments``, one CSV
row each) and the operator API (one JSON object), so both accept exactly the same records.
Pure: strings in, frozen records or :class:`RecordError` out.

CSV columns (a header row names them; order is free, unknown columns are refused):

* accounts: ``account_id`` (required), ``customer_class``, ``contact_numbers`` (``;``-separated,
  ``+27821234567`` style), ``indigent_from``, ``indigent_to`` (dates), ``essential``
  (``true``/``false``), ``essential_reason``, ``pays_above_free_allocation`` (``true``/``false``),
  ``meters`` (``;``-separated meter ids owned by the account);
* arrears: ``account_id``, ``arrears`` (ZAR), ``arrears_since`` (date the oldest unpaid amount
  fell due; required when arrears > 0), ``as_of`` (date of the balance);
* payments: ``reference`` (unique payment reference), ``account_id``, ``amount`` (ZAR > 0),
  ``paid_at`` (RFC 3339 instant, or a date meaning local midnight).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Final
from zoneinfo import ZoneInfo

from gateway.errors import ValidationError

__all__ = [
    "COLUMNS",
    "AccountRecord",
    "ArrearsRecord",
    "PaymentRecord",
    "RecordError",
    "parse_account",
    "parse_arrears",
    "parse_payment",
    "row_key",
]

_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_METER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CLASS = re.compile(r"^[a-z0-9_-]{1,32}$")
_PHONE = re.compile(r"^\+?[0-9]{7,15}$")
_REFERENCE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_AMOUNT = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,2})?$")
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n", ""}

COLUMNS: Final[Mapping[str, tuple[frozenset[str], frozenset[str]]]] = {
    # kind: (required columns, optional columns)
    "accounts": (
        frozenset({"account_id"}),
        frozenset(
            {
                "customer_class",
                "contact_numbers",
                "indigent_from",
                "indigent_to",
                "essential",
                "essential_reason",
                "pays_above_free_allocation",
                "meters",
            }
        ),
    ),
    "arrears": (frozenset({"account_id", "arrears", "as_of"}), frozenset({"arrears_since"})),
    "payments": (frozenset({"reference", "account_id", "amount", "paid_at"}), frozenset()),
}


class RecordError(ValidationError):
    """A record from the billing system is not acceptable; the message says which field and
    why, never echoing more than the field's name."""


@dataclass(frozen=True, slots=True)
class AccountRecord:
    account_id: str
    customer_class: str = "domestic"
    contact_numbers: tuple[str, ...] = ()
    indigent_from: date | None = None
    indigent_to: date | None = None
    essential: bool = False
    essential_reason: str = ""
    pays_above_free_allocation: bool = False
    #: None: leave the account's meters as they are
    meters: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ArrearsRecord:
    account_id: str
    arrears: Decimal
    arrears_since: date | None
    as_of: date


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    reference: str
    account_id: str
    amount: Decimal
    paid_at: datetime


def _text(row: Mapping[str, str | None], name: str) -> str:
    return (row.get(name) or "").strip()


def _account_id(row: Mapping[str, str | None], name: str = "account_id") -> str:
    value = _text(row, name)
    if not _ACCOUNT_ID.match(value):
        raise RecordError(f"{name}: 1-64 letters, digits, '_', '.' or '-' required")
    return value


def _date(row: Mapping[str, str | None], name: str, *, required: bool = False) -> date | None:
    value = _text(row, name)
    if not value:
        if required:
            raise RecordError(f"{name}: a date YYYY-MM-DD is required")
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RecordError(f"{name}: not a date YYYY-MM-DD") from None


def _flag(row: Mapping[str, str | None], name: str) -> bool:
    value = _text(row, name).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise RecordError(f"{name}: must be true or false")


def _amount(row: Mapping[str, str | None], name: str) -> Decimal:
    value = _text(row, name)
    if not _AMOUNT.match(value):
        raise RecordError(f"{name}: an amount in rand with at most 2 decimals is required")
    try:
        return Decimal(value)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise RecordError(f"{name}: not an amount") from None


def _list(row: Mapping[str, str | None], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in _text(row, name).split(";") if part.strip())


def parse_account(row: Mapping[str, str | None]) -> AccountRecord:
    account_id = _account_id(row)
    customer_class = _text(row, "customer_class") or "domestic"
    if not _CLASS.match(customer_class):
        raise RecordError("customer_class: 1-32 lower-case letters, digits, '_' or '-'")
    contacts = _list(row, "contact_numbers")
    if any(not _PHONE.match(c) for c in contacts):
        raise RecordError("contact_numbers: each a phone number of 7-15 digits, '+' allowed")
    starts, ends = _date(row, "indigent_from"), _date(row, "indigent_to")
    if starts and ends and ends < starts:
        raise RecordError("indigent_to: before indigent_from")
    essential = _flag(row, "essential")
    reason = _text(row, "essential_reason")
    if len(reason) > 200:
        raise RecordError("essential_reason: at most 200 characters")
    meters: tuple[str, ...] | None = None
    if "meters" in row and row["meters"] is not None:
        meters = _list(row, "meters")
        if any(not _METER_ID.match(m) for m in meters):
            raise RecordError("meters: meter ids of 1-64 letters, digits, '_' or '-'")
    return AccountRecord(
        account_id=account_id,
        customer_class=customer_class,
        contact_numbers=contacts,
        indigent_from=starts,
        indigent_to=ends,
        essential=essential,
        essential_reason=reason,
        pays_above_free_allocation=_flag(row, "pays_above_free_allocation"),
        meters=meters,
    )


def parse_arrears(row: Mapping[str, str | None]) -> ArrearsRecord:
    account_id = _account_id(row)
    arrears = _amount(row, "arrears")
    since = _date(row, "arrears_since", required=arrears > 0)
    as_of = _date(row, "as_of", required=True)
    assert as_of is not None
    if since is not None and since > as_of:
        raise RecordError("arrears_since: after as_of")
    return ArrearsRecord(account_id, arrears, since if arrears > 0 else None, as_of)


def parse_payment(row: Mapping[str, str | None], zone: ZoneInfo) -> PaymentRecord:
    reference = _text(row, "reference")
    if not _REFERENCE.match(reference):
        raise RecordError("reference: 1-64 letters, digits or _ . : / -")
    account_id = _account_id(row)
    amount = _amount(row, "amount")
    if amount <= 0:
        raise RecordError("amount: must be more than zero")
    text = _text(row, "paid_at")
    try:
        if len(text) == 10:
            paid_at = datetime.combine(date.fromisoformat(text), time(0), tzinfo=zone)
        else:
            paid_at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RecordError("paid_at: an RFC 3339 instant or a date is required") from None
    if paid_at.tzinfo is None:
        raise RecordError("paid_at: needs a UTC offset")
    return PaymentRecord(reference, account_id, amount, paid_at)


def row_key(kind: str, record: AccountRecord | ArrearsRecord) -> str:
    """A key over a record's content: the same row imported again has the same key."""
    return hashlib.sha256(f"{kind}\x00{record!r}".encode()).hexdigest()
