"""Meter readers' bulk read files: parsing (pure) and loading (one transaction per line).

A file is UTF-8 CSV (a byte-order mark, as Excel writes, is skipped) with a header line naming
at least ``meter_id``, ``read_at``, ``value`` and ``source``; ``register``, ``reader`` and
``photo_ref`` are optional, other columns are ignored. A line that cannot be parsed (bytes that
are not UTF-8, text that cannot be stored, a time outside the range reads may have), names an
unknown meter, conflicts with a stored read, or holds data the database refuses is reported
with its line number and reason, and the rest of the file still loads. Loading the same file
again changes nothing: each line is the same read (meter, register, time, source).
"""

from __future__ import annotations

import csv
import math
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TextIO

from psycopg import AsyncConnection, DataError

from gateway.billing.core import BillingPolicy, ReadSource, read_time_problem
from gateway.billing.errors import ReadConflictError, ReadFileError
from gateway.billing.reads import ReadSubmission, submit_read
from gateway.errors import NotFoundError
from gateway.text import text_problem

__all__ = ["LineError", "LineResult", "import_reads", "open_read_file", "parse_reads"]

REQUIRED: Final = ("meter_id", "read_at", "value", "source")
OPTIONAL: Final = ("register", "reader", "photo_ref")
_STORED_TEXT: Final = ("meter_id", "register", "reader", "photo_ref")
_TEXT_MAX: Final = 200


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class LineResult:
    """What became of one line: ``accepted``, ``rejected``, ``unchanged`` or ``error``."""

    line: int
    outcome: str
    reason: str | None = None
    detail: str | None = None
    read_id: int | None = None


def _parse_line(
    fields: dict[str, str | None], line: int, origin: str
) -> ReadSubmission | LineError:
    def text(name: str) -> str | None:
        value = (fields.get(name) or "").strip()
        return value or None

    for name in _STORED_TEXT:
        if (problem := text_problem(text(name) or "")) is not None:
            return LineError(line, "bad_text", f"{name} {problem}")
    meter_id = text("meter_id")
    if meter_id is None:
        return LineError(line, "missing_field", "meter_id is empty")
    read_at = text("read_at")
    if read_at is None:
        return LineError(line, "missing_field", "read_at is empty")
    try:
        ts = datetime.fromisoformat(read_at.replace("Z", "+00:00"))
    except ValueError:
        return LineError(line, "bad_time", f"read_at {read_at!r} is not an ISO 8601 time")
    if (problem := read_time_problem(ts)) is not None:
        return LineError(line, "bad_time", f"read_at {read_at!r} {problem}")
    raw_value = text("value")
    try:
        value = Decimal(raw_value or "")
    except InvalidOperation:
        return LineError(line, "bad_value", f"value {raw_value!r} is not a number")
    if not value.is_finite() or value < 0 or not math.isfinite(float(value)):
        return LineError(line, "bad_value", f"value {raw_value!r} is not a register reading")
    raw_source = text("source")
    try:
        source = ReadSource(raw_source or "")
    except ValueError:
        return LineError(
            line,
            "bad_source",
            f"source {raw_source!r} is not one of {', '.join(s.value for s in ReadSource)}",
        )
    for name in _STORED_TEXT:
        if len(text(name) or "") > _TEXT_MAX:
            return LineError(line, "too_long", f"{name} is longer than {_TEXT_MAX} characters")
    return ReadSubmission(
        meter_id=meter_id,
        ts=ts,
        value=float(value),
        source=source,
        channel=text("register"),
        reader=text("reader"),
        photo_ref=text("photo_ref"),
        origin=f"{origin}:{line}",
    )


def open_read_file(path: Path) -> TextIO:
    """Open a read file for :func:`parse_reads` (raises :class:`OSError`).

    UTF-8, a leading byte-order mark skipped; a byte that is not UTF-8 is decoded as a
    surrogate escape, so that its line, not the whole file, is the error.
    """
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def _is_utf8(texts: Iterable[str]) -> bool:
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:  # a surrogate escape: a byte that was not UTF-8
        return False
    return True


def parse_reads(
    lines: Iterable[str], *, origin: str
) -> Iterator[tuple[int, ReadSubmission | LineError]]:
    """Parse a read file lazily: (line number, read or error) per data line.

    Raises :class:`ReadFileError` when the header is not UTF-8 text or lacks a required
    column. ``lines`` as :func:`open_read_file` decodes them. Each physical line is one record
    (a field may not hold a line break), parsed on its own: a line the CSV reader cannot take
    (a field over its size limit, a quote left open) is that line's error and the next line is
    read as usual. Blank lines are skipped.
    """
    numbered = enumerate(lines, start=1)
    header: list[str] = []
    for _, text in numbered:
        if text.strip():
            try:
                header = _record(text)
            except csv.Error as exc:
                raise ReadFileError(f"the read file's header line: {exc}") from None
            break
    if not _is_utf8(header):
        raise ReadFileError("the read file's header line is not UTF-8 text")
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise ReadFileError(f"read file header lacks column(s) {', '.join(missing)}")
    for line, text in numbered:
        if not text.strip():
            continue
        try:
            values = _record(text)
        except csv.Error as exc:
            yield line, LineError(line, "bad_csv", str(exc)[:_TEXT_MAX])
            continue
        if not _is_utf8(values):
            yield line, LineError(line, "not_utf8", "not UTF-8 text")
            continue
        if len(values) > len(header):
            yield line, LineError(line, "extra_fields", "more fields than header columns")
            continue
        fields: dict[str, str | None] = dict.fromkeys(header)
        fields.update(zip(header, values, strict=False))
        yield line, _parse_line(fields, line, origin)


def _record(text: str) -> list[str]:
    """The fields of one line (raises :class:`csv.Error`, also for a quote left open)."""
    return next(csv.reader([text], strict=True), [])


def _refusal(exc: DataError) -> str:
    """What the database (or psycopg, converting a value) said about a line's data."""
    message = exc.diag.message_primary or str(exc) or type(exc).__name__
    return f"the database refused the line's data: {message[:_TEXT_MAX]}"


async def import_reads(
    conn: AsyncConnection[Any],
    lines: Iterable[str],
    *,
    origin: str,
    actor: str | None,
    policy: BillingPolicy,
) -> AsyncIterator[LineResult]:
    """Load a read file line by line, yielding what became of each line.

    ``policy`` decides, as for any read, which estimates an accepted read supersedes.
    """
    for line, parsed in parse_reads(lines, origin=origin):
        if isinstance(parsed, LineError):
            yield LineResult(line, "error", parsed.reason, parsed.detail)
            continue
        try:
            result = await submit_read(conn, parsed, actor=actor, policy=policy)
        except NotFoundError as exc:
            yield LineResult(line, "error", "unknown_meter", str(exc))
            continue
        except ReadConflictError as exc:
            yield LineResult(line, "error", "conflicting_read", str(exc))
            continue
        except DataError as exc:  # the line's transaction is rolled back; the next one is new
            yield LineResult(line, "error", "bad_data", _refusal(exc))
            continue
        read = result.read
        outcome = read.status if result.created else "unchanged"
        yield LineResult(line, outcome, read.reason, read.detail, read.id)
