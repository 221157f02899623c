"""Tariff files (YAML or CSV) and storing tariff versions.

YAML::

    tariffs:
      - utility: electricity
        customer_class: domestic
        effective_from: 2026-07-01
        name: Domestic prepaid 2026/27      # optional
        vat_rate: "0.15"                    # optional, default 0.15
        fixed_monthly: "0.00"               # optional, VAT exclusive, default 0
        blocks:                             # per calendar month, rates VAT exclusive
          - {from: 0, to: 100, rate: "2.1000"}
          - {from: 100, to: 400, rate: "2.6500"}
          - {from: 400, to: 650, rate: "3.0500"}
          - {from: 650, to: null, rate: "3.4100"}

CSV: a header ``utility,customer_class,effective_from,name,vat_rate,fixed_monthly,block_from,
block_to,rate`` and one row per block (``block_to`` empty for the open-ended last block).

A version, once loaded, is never changed: loading the identical version again is a no-op, a
different one for the same utility, class and date is refused (give it a new date).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
import yaml
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from gateway.vending.errors import InvalidInputError
from gateway.vending.pricing import Block, Tariff
from gateway.vending.store import TARIFF_COLUMNS, tariff_from_row

__all__ = ["LoadResult", "parse_tariff_file", "store_tariffs", "tariff_json", "tariffs_from_data"]

DEFAULT_VAT = Decimal("0.15")
VAT_PLACES = 4  # the stored VAT rate: numeric(6, 4)
MONEY_PLACES = 2  # the stored fixed monthly charge: numeric(12, 2)
MAX_FIXED_MONTHLY = Decimal("9999999999.99")
_CUSTOMER_CLASS = re.compile(r"[a-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class LoadResult:
    added: int
    unchanged: int


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, float | bool):
        raise InvalidInputError(f"{what} must be written as a decimal string, not a float")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise InvalidInputError(f"{what} {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise InvalidInputError(f"{what} must be finite")
    return number


def _places(number: Decimal, places: int, what: str) -> Decimal:
    """``number`` unchanged if it has at most ``places`` decimal places (trailing zeros aside)."""
    exponent = number.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # finite numbers only reach here
    if -exponent > places:
        raise InvalidInputError(f"{what} {number} has more than {places} decimal places")
    return number


def _vat_rate(value: object) -> Decimal:
    rate = _decimal(DEFAULT_VAT if value is None else value, "vat_rate")
    if not 0 <= rate < 1:
        raise InvalidInputError(f"vat_rate {rate} must be a fraction in [0, 1), e.g. 0.15")
    return _places(rate, VAT_PLACES, "vat_rate")


def _fixed_monthly(value: object) -> Decimal:
    fixed = _decimal(0 if value is None else value, "fixed_monthly")
    if not 0 <= fixed <= MAX_FIXED_MONTHLY:
        raise InvalidInputError(
            f"fixed_monthly {fixed} must be between 0 and {MAX_FIXED_MONTHLY} rand"
        )
    return _places(fixed, MONEY_PLACES, "fixed_monthly")


def _date(value: object) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise InvalidInputError(f"effective_from {value!r} is not a date (YYYY-MM-DD)") from None


def _tariff(item: Mapping[str, Any], blocks: Iterable[Mapping[str, Any]]) -> Tariff:
    utility = item.get("utility")
    if utility not in ("electricity", "water"):
        raise InvalidInputError(f"utility must be electricity or water, got {utility!r}")
    customer_class = str(item.get("customer_class") or "domestic")
    if not _CUSTOMER_CLASS.fullmatch(customer_class):
        raise InvalidInputError(
            f"customer_class {customer_class!r} must be 1-32 of a-z, 0-9, '_' and '-'"
        )
    try:
        return Tariff(
            tariff_id=0,
            utility=utility,
            customer_class=customer_class,
            effective_from=_date(item.get("effective_from")),
            vat_rate=_vat_rate(item.get("vat_rate")),
            fixed_monthly=_fixed_monthly(item.get("fixed_monthly")),
            blocks=tuple(
                Block(
                    _decimal(block.get("from"), "block from"),
                    None
                    if block.get("to") in (None, "")
                    else _decimal(block.get("to"), "block to"),
                    _decimal(block.get("rate"), "block rate"),
                )
                for block in blocks
            ),
        )
    except ValueError as exc:
        raise InvalidInputError(f"{utility} tariff for {customer_class!r}: {exc}") from None


def tariffs_from_data(data: object) -> list[tuple[Tariff, str]]:
    """Tariffs (with their names) from the parsed YAML/JSON document."""
    items = data.get("tariffs") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise InvalidInputError("expected a non-empty list under 'tariffs'")
    result = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("blocks"), list):
            raise InvalidInputError("each tariff needs its fields and a list of blocks")
        result.append((_tariff(item, item["blocks"]), str(item.get("name") or "")))
    return result


def _from_csv(text: str) -> list[tuple[Tariff, str]]:
    groups: dict[tuple[str, str, str], tuple[dict[str, str], list[dict[str, str]]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        key = (row.get("utility", ""), row.get("customer_class", ""), row.get("effective_from", ""))
        head, blocks = groups.setdefault(key, (row, []))
        blocks.append(
            {"from": row["block_from"], "to": row.get("block_to", ""), "rate": row["rate"]}
        )
        del head
    return [(_tariff(head, blocks), head.get("name") or "") for head, blocks in groups.values()]


def parse_tariff_file(name: str, text: str) -> list[tuple[Tariff, str]]:
    """Tariffs from a ``.csv`` file or a YAML (or JSON) one."""
    try:
        if name.lower().endswith(".csv"):
            return _from_csv(text)
        return tariffs_from_data(yaml.safe_load(text))
    except (yaml.YAMLError, KeyError, csv.Error) as exc:
        raise InvalidInputError(
            f"{name}: not a tariff file ({type(exc).__name__}: {exc})"
        ) from None


def _blocks_json(tariff: Tariff) -> list[dict[str, str | None]]:
    return [
        {
            "from": format(block.lower.normalize(), "f"),
            "to": None if block.upper is None else format(block.upper.normalize(), "f"),
            "rate": format(block.rate.normalize(), "f"),
        }
        for block in tariff.blocks
    ]


def tariff_json(tariff: Tariff, name: str = "") -> dict[str, Any]:
    return {
        "tariff_id": tariff.tariff_id,
        "utility": tariff.utility,
        "customer_class": tariff.customer_class,
        "effective_from": tariff.effective_from.isoformat(),
        "name": name,
        "vat_rate": format(tariff.vat_rate.normalize(), "f"),
        "fixed_monthly": str(tariff.fixed_monthly.quantize(Decimal("0.01"))),
        "blocks": _blocks_json(tariff),
    }


async def store_tariffs(
    conn: AsyncConnection[Any], tariffs: Iterable[tuple[Tariff, str]]
) -> LoadResult:
    """Insert new versions; identical ones are skipped, conflicting ones refused (atomic).

    A value the database refuses (out of range, a broken constraint) is reported as
    :class:`InvalidInputError`, like every other invalid tariff."""
    added = unchanged = 0
    try:
        async with conn.transaction():
            for tariff, name in tariffs:
                cur = await conn.execute(
                    f"SELECT {TARIFF_COLUMNS} FROM tariffs WHERE utility = %s"
                    " AND customer_class = %s AND effective_from = %s",
                    (tariff.utility, tariff.customer_class, tariff.effective_from),
                )
                row = await cur.fetchone()
                if row is not None:
                    existing = tariff_from_row(row)
                    same = (
                        existing.vat_rate == tariff.vat_rate
                        and existing.fixed_monthly == tariff.fixed_monthly
                        and existing.blocks == tariff.blocks
                    )
                    if not same:
                        raise InvalidInputError(
                            f"a different {tariff.utility} tariff for {tariff.customer_class!r} "
                            f"from {tariff.effective_from} is already loaded; tariff versions are "
                            "never changed: give the new one its own effective date"
                        )
                    unchanged += 1
                    continue
                await conn.execute(
                    "INSERT INTO tariffs (utility, customer_class, effective_from, name, vat_rate,"
                    " fixed_monthly, blocks) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        tariff.utility,
                        tariff.customer_class,
                        tariff.effective_from,
                        name,
                        tariff.vat_rate,
                        tariff.fixed_monthly,
                        Jsonb(_blocks_json(tariff)),
                    ),
                )
                added += 1
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        detail = exc.diag.message_primary or type(exc).__name__
        raise InvalidInputError(f"the tariffs cannot be stored: {detail}") from None
    return LoadResult(added, unchanged)
