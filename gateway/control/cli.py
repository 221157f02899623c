"""``gateway import accounts|arrears|payments FILE``: the billing system's bulk files, and
``gateway control plan``: plan a credit-control run (nothing executes until it is approved).

``import`` prints one line per row that was not loaded (``line N: error <reason>``), then a
summary; it exits 0 when every row loaded (stored, unchanged or stale), 3 when some rows had
errors. ``control plan`` prints the stored run (its id, and per item the step, reasons and
legal checks) as JSON.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg

from gateway.control.imports import import_rows
from gateway.control.policy import DEFAULT_POLICY
from gateway.control.runs import plan_run
from gateway.errors import StorageError, ValidationError
from gateway.settings import Settings

__all__ = ["EXIT_BAD_ROWS", "add_control_commands", "add_import_commands"]

EXIT_BAD_ROWS = 3

Runner = Callable[[Coroutine[Any, Any, int]], int]

_HELP = {
    "accounts": "accounts: contacts, indigent dates, essential flag, meters (CSV)",
    "arrears": "arrears balances and their age (CSV)",
    "payments": "payments, each once by reference; they reduce arrears (CSV)",
}


async def _import(settings: Settings, kind: str, path: Path) -> int:
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise ValidationError(f"cannot open {path}: {exc.strerror}") from exc
    counts: Counter[str] = Counter()
    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.database_url.get_secret_value(), autocommit=True
        )
    except psycopg.Error as exc:
        handle.close()
        raise StorageError(f"cannot connect to the database: {type(exc).__name__}") from exc
    try:
        with handle:
            async for result in import_rows(
                conn,
                kind,
                handle,
                actor=f"cli:{getpass.getuser()}",
                source=f"file:{path.name}",
                zone=DEFAULT_POLICY.zone,
            ):
                counts[result.outcome] += 1
                if result.outcome == "error":
                    print(f"line {result.line}: error {result.reason}")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{path} is not UTF-8 text: {exc.reason}") from exc
    except psycopg.Error as exc:
        raise StorageError(f"database error: {type(exc).__name__}") from exc
    finally:
        await conn.close()
    print(
        f"{path.name}: stored {counts['stored']}, unchanged {counts['unchanged']},"
        f" stale {counts['stale']}, errors {counts['error']}"
    )
    return EXIT_BAD_ROWS if counts["error"] else 0


def add_import_commands(imports: Any, run: Runner) -> None:
    """Add the credit-control file kinds to ``gateway import``."""
    for kind, help_text in _HELP.items():
        parser = imports.add_parser(kind, help=help_text)
        parser.add_argument("file", type=Path, help="CSV file (columns in docs/credit-control.md)")

        def handler(settings: Settings, args: argparse.Namespace, kind: str = kind) -> int:
            return run(_import(settings, kind, args.file))

        parser.set_defaults(func=handler)


async def _plan(settings: Settings, args: argparse.Namespace) -> int:
    today = datetime.now(UTC).astimezone(DEFAULT_POLICY.zone).date()
    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.database_url.get_secret_value(), autocommit=True
        )
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to the database: {type(exc).__name__}") from exc
    try:
        run = await plan_run(
            conn,
            actor=f"cli:{getpass.getuser()}",
            as_of=args.as_of or today,
            now=datetime.now(UTC),
            account_ids=args.account or None,
            fleet_share_limit=args.fleet_share_limit,
        )
    finally:
        await conn.close()
    print(json.dumps(run, indent=2, default=str))
    return 0


def _percent(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not Decimal(0) <= value <= Decimal(100):
        raise argparse.ArgumentTypeError("a percentage 0-100")
    return value


def add_control_commands(sub: Any, run: Runner) -> None:
    """Add ``gateway control plan``."""
    control = sub.add_parser("control", help="credit control").add_subparsers(
        dest="control", required=True
    )
    plan = control.add_parser("plan", help="plan a credit-control run (approve it in the API)")
    plan.add_argument("--as-of", type=date.fromisoformat, help="decision date (default today)")
    plan.add_argument("--account", action="append", help="only this account (repeatable)")
    plan.add_argument(
        "--fleet-share-limit", type=_percent, help="raise the fleet-share limit for this run"
    )
    plan.set_defaults(func=lambda settings, args: run(_plan(settings, args)))
