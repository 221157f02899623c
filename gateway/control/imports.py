"""Bulk imports from the billing system: ``gateway import accounts|arrears|payments FILE``.

A CSV file with a header row (columns in :mod:`gateway.control.records`). Every row is parsed
and stored on its own: a bad row is reported with its line number and reason and the rest of
the file still loads; importing the same file twice changes nothing (payments by reference,
account and arrears rows by a key over their content).
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from gateway.control.accounts import apply_account, apply_arrears, record_payment
from gateway.control.records import (
    COLUMNS,
    parse_account,
    parse_arrears,
    parse_payment,
)
from gateway.errors import GatewayError, ValidationError

__all__ = ["ImportResult", "import_rows"]


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What became of one line: ``stored``, ``unchanged``, ``stale`` or ``error``."""

    line: int
    outcome: str
    reason: str = ""


def _check_header(kind: str, header: list[str] | None) -> None:
    required, optional = COLUMNS[kind]
    names = {h.strip() for h in header or ()}
    missing = sorted(required - names)
    unknown = sorted(names - required - optional)
    if missing or unknown:
        parts = [f"missing columns: {', '.join(missing)}"] if missing else []
        parts += [f"unknown columns: {', '.join(unknown)}"] if unknown else []
        raise ValidationError(f"{kind} file header: {'; '.join(parts)}")


async def import_rows(
    conn: psycopg.AsyncConnection[Any],
    kind: str,
    lines: Iterable[str],
    *,
    actor: str,
    source: str,
    zone: ZoneInfo,
) -> AsyncIterator[ImportResult]:
    """Parse and store each row of a ``kind`` file (accounts, arrears, payments)."""
    if kind not in COLUMNS:
        raise ValidationError(f"unknown import kind {kind!r}")
    reader = csv.DictReader(lines)
    _check_header(kind, list(reader.fieldnames) if reader.fieldnames else None)
    reader.fieldnames = [h.strip() for h in reader.fieldnames or ()]
    for row in reader:
        line = reader.line_num
        if None in row:
            yield ImportResult(line, "error", "more fields than the header names")
            continue
        try:
            if kind == "accounts":
                outcome = await apply_account(
                    conn, parse_account(row), actor=actor, source=source, by_key=True
                )
            elif kind == "arrears":
                outcome = await apply_arrears(
                    conn, parse_arrears(row), actor=actor, source=source, by_key=True
                )
            else:
                outcome, _ = await record_payment(
                    conn, parse_payment(row, zone), actor=actor, source=source
                )
        except GatewayError as exc:
            # a bad field, an unknown account or meter, a conflicting payment: this row only
            yield ImportResult(line, "error", str(exc))
            continue
        yield ImportResult(line, outcome)
