"""``gateway import accounts|arrears|payments FILE``: the billing system's bulk files.

Prints one line per row that was not loaded (``line N: error <reason>``), then a summary;
exits 0 when every row loaded (stored, unchanged or stale), 3 when some rows had errors.
"""

from __future__ import annotations

import argparse
import getpass
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psycopg

from gateway.control.imports import import_rows
from gateway.control.policy import DEFAULT_POLICY
from gateway.errors import StorageError, ValidationError
from gateway.settings import Settings

__all__ = ["EXIT_BAD_ROWS", "add_import_commands"]

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
