"""Receipts and other vending responses as JSON bytes (the exact wire contract).

A credit vend's receipt::

    {"receipt_no", "request_id", "meter", "utility", "state", "reprint",
     "tokens": [{"kind", "token", "units", "tid"}], "amount", "units",
     "charges": {"vat", "fixed", "debt_recovered"},
     "blocks": [{"from", "to", "rate", "units"}], "float_balance", "issued_at"}

Money is a decimal string with two places, units a decimal string with one place (tenths),
rates as the tariff gives them, times RFC 3339 in UTC. Key-change tokens carry no TID (IEC
62055-41 key-change sections have none): their ``tid`` is 0 and their ``units`` null.
The bytes are what the idempotency record stores and every retry gets back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from gateway.vending.pricing import CENT, BlockUse

__all__ = [
    "IssuedToken",
    "dumps",
    "money",
    "receipt",
    "rfc3339",
    "units",
]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    kind: str
    token: str
    tenths: int | None
    tid: int


def money(value: Decimal) -> str:
    """Two decimal places: ``Decimal("50") → "50.00"``."""
    return str(value.quantize(CENT))


def units(tenths: int) -> str:
    """Tenths as a decimal string: ``304 → "30.4"``."""
    return f"{tenths // 10}.{tenths % 10}"


def rfc3339(instant: datetime) -> str:
    """UTC with milliseconds and a ``Z``."""
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text


def block_json(use: BlockUse) -> dict[str, Any]:
    return {
        "from": _plain(use.lower),
        "to": None if use.upper is None else _plain(use.upper),
        "rate": _plain(use.rate),
        "units": units(use.tenths),
    }


def receipt(
    *,
    receipt_no: str,
    request_id: str,
    meter: str,
    utility: str,
    state: str,
    tokens: Sequence[IssuedToken],
    amount: Decimal,
    tenths: int,
    vat: Decimal,
    fixed: Decimal,
    debt_recovered: Decimal,
    blocks: Sequence[BlockUse],
    float_balance: Decimal,
    issued_at: datetime,
) -> dict[str, Any]:
    """A receipt in the contract's field order (``reprint`` false)."""
    return {
        "receipt_no": receipt_no,
        "request_id": request_id,
        "meter": meter,
        "utility": utility,
        "state": state,
        "reprint": False,
        "tokens": [
            {
                "kind": token.kind,
                "token": token.token,
                "units": None if token.tenths is None else units(token.tenths),
                "tid": token.tid,
            }
            for token in tokens
        ],
        "amount": money(amount),
        "units": units(tenths),
        "charges": {
            "vat": money(vat),
            "fixed": money(fixed),
            "debt_recovered": money(debt_recovered),
        },
        "blocks": [block_json(use) for use in blocks],
        "float_balance": money(float_balance),
        "issued_at": rfc3339(issued_at),
    }


def dumps(document: Any) -> bytes:
    """Compact JSON bytes."""
    return orjson.dumps(document)
