"""``gateway tariffs load FILE``, ``gateway vendors top-up NAME AMOUNT`` and
``gateway vendors statement NAME [--date D]``: vending administration from the shell."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg

from gateway.errors import StorageError
from gateway.settings import Settings
from gateway.vending import tariffs, vendors
from gateway.vending.errors import InvalidAmountError, InvalidInputError
from gateway.vending.receipt import money
from gateway.vending.service import VendingConfig

__all__ = ["add_commands"]


async def _connect(settings: Settings) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(
            settings.database_url.get_secret_value(), autocommit=True
        )
    except psycopg.OperationalError as exc:
        raise StorageError(f"cannot reach the database: {type(exc).__name__}") from exc


def _load(settings: Settings, path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    parsed = tariffs.parse_tariff_file(path.name, text)

    async def store() -> tariffs.LoadResult:
        async with await _connect(settings) as conn:
            return await tariffs.store_tariffs(conn, parsed)

    result = asyncio.run(store())
    print(f"tariffs: {result.added} added, {result.unchanged} already loaded")
    return 0


async def _top_up(settings: Settings, name: str, amount: str, note: str) -> int:
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise InvalidAmountError(f"{amount!r} is not an amount") from None
    async with await _connect(settings) as conn:
        balance = await vendors.top_up(conn, name, value, actor="cli", note=note)
    print(f"{name}: float balance {money(balance)}")
    return 0


def _statement(settings: Settings, name: str, day: date | None, output: Path | None) -> int:
    zone = VendingConfig.from_settings(settings).zone
    when = day or datetime.now(UTC).astimezone(zone).date()

    async def fetch() -> str:
        async with await _connect(settings) as conn:
            return await vendors.daily_statement(conn, name, when, zone)

    text = asyncio.run(fetch())
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
    return 0


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_commands(sub: Any) -> None:
    """Register the ``tariffs`` and ``vendors`` commands on the ``gateway`` parser."""
    tariff = sub.add_parser("tariffs", help="vending tariffs").add_subparsers(
        dest="tariffs_command", required=True
    )
    load = tariff.add_parser("load", help="load tariff versions from a YAML or CSV file")
    load.add_argument("file", type=Path)
    load.set_defaults(func=lambda s, a: _load(s, a.file))

    vendor = sub.add_parser("vendors", help="vendor floats").add_subparsers(
        dest="vendors_command", required=True
    )
    top_up = vendor.add_parser("top-up", help="credit a vendor's float")
    top_up.add_argument("name")
    top_up.add_argument("amount", help="decimal rand, e.g. 5000.00")
    top_up.add_argument("--note", default="", help="reference kept with the movement")
    top_up.set_defaults(func=lambda s, a: asyncio.run(_top_up(s, a.name, a.amount, a.note)))
    statement = vendor.add_parser(
        "statement", help="a vendor's daily float statement (CSV): opening, movements, closing"
    )
    statement.add_argument("name")
    statement.add_argument("--date", type=_day, default=None, help="local day (default: today)")
    statement.add_argument("--output", type=Path, default=None, help="file (default: stdout)")
    statement.set_defaults(func=lambda s, a: _statement(s, a.name, a.date, a.output))
