"""``gateway export billing|corrections|verify``, ``gateway import reads`` and
``gateway billing limits list|set``.

Exports go to ``--out FILE`` (written beside it and renamed into place when complete, so a
failed export leaves no partial file) or to standard output. ``export verify FILE…`` says of
each file whether it is complete (CSV trailer, Parquet footer); it exits 0 when all are and
1 otherwise. ``billing limits`` lists or sets the plausibility limits of person's reads, one
JSON line per limit (a change is audited, with the caller's login as actor). ``import reads``
prints one line
per line of the file that was not accepted, then a summary; it exits 0 when every line was
loaded (accepted, rejected for review, or already there), 3 when some lines had errors.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import os
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg

from gateway.billing.errors import IncompleteFileError, ReadFileError
from gateway.billing.limits import MAX_LIMIT, SIZE_PATTERN, UTILITIES, Limit, list_limits, set_limit
from gateway.billing.period import Period
from gateway.billing.settings import load_policy
from gateway.errors import StorageError
from gateway.settings import Settings
from protocols.errors import UsageError

__all__ = ["add_commands"]

log = logging.getLogger("gateway.billing")

EXIT_BAD_LINES = 3

Runner = Callable[[Coroutine[Any, Any, int]], int]


@asynccontextmanager
async def _connect(settings: Settings) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    try:
        conn = await psycopg.AsyncConnection.connect(settings.database_url.get_secret_value())
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to the database: {type(exc).__name__}") from exc
    try:
        yield conn
    except psycopg.Error as exc:
        raise StorageError(f"database error: {exc.diag.message_primary or exc}") from exc
    finally:
        await conn.close()


async def _write(chunks: AsyncIterator[bytes], out: str | None) -> int:
    if out is None:
        total = 0
        async for chunk in chunks:
            sys.stdout.buffer.write(chunk)
            total += len(chunk)
        sys.stdout.buffer.flush()
        return total
    target = Path(out)
    partial = target.with_name(f".{target.name}.partial")
    total = 0
    try:
        with partial.open("wb") as handle:
            async for chunk in chunks:
                handle.write(chunk)
                total += len(chunk)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return total


def _period(text: str) -> Period:
    try:
        return Period.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> str:
    if not re.fullmatch(SIZE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not '*' or a size class like 20mm")
    return text


def _max_per_day(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value <= MAX_LIMIT):
        raise argparse.ArgumentTypeError(f"the limit must be above 0 and at most {MAX_LIMIT:g}")
    return value


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def _export_billing(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.billing.export import export_bytes  # noqa: PLC0415 - pyarrow is heavy

    policy = load_policy()
    async with _connect(settings) as conn:
        size = await _write(
            export_bytes(
                conn, args.period, file_format=args.format, utility=args.utility, policy=policy
            ),
            args.out,
        )
    log.info("billing export %s written", args.period, extra={"bytes": size, "out": args.out})
    return 0


async def _export_corrections(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.billing.corrections import correction_bytes  # noqa: PLC0415 - pyarrow

    policy = load_policy()
    async with _connect(settings) as conn, conn.transaction():
        # committed once the file is in place: rows a --new report delivers are marked then
        size = await _write(
            correction_bytes(
                conn,
                file_format=args.format,
                now=datetime.now(UTC),
                period=args.period,
                since=args.since,
                new=args.new,
                policy=policy,
                actor=f"cli:{getpass.getuser()}",
            ),
            args.out,
        )
    log.info("corrections report written", extra={"bytes": size, "out": args.out})
    return 0


async def _import_reads(settings: Settings, path: Path, handle: IO[str]) -> int:
    from gateway.billing.readfile import import_reads  # noqa: PLC0415 - keeps start-up light

    policy = load_policy()
    actor = f"cli:{getpass.getuser()}"
    counts: Counter[str] = Counter()
    async with _connect(settings) as conn:
        results = import_reads(conn, handle, origin=f"file:{path.name}", actor=actor, policy=policy)
        async for result in results:
            counts[result.outcome] += 1
            if result.outcome not in ("accepted", "unchanged"):
                detail = result.detail or ""
                print(f"line {result.line}: {result.outcome} {result.reason}: {detail}")
    print(
        f"{path.name}: accepted {counts['accepted']}, rejected {counts['rejected']},"
        f" unchanged {counts['unchanged']}, errors {counts['error']}"
    )
    return EXIT_BAD_LINES if counts["error"] else 0


def _cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.billing.verify import check_file  # noqa: PLC0415 - pyarrow is heavy

    del settings
    failed = 0
    for name in args.files:
        try:
            check = check_file(Path(name))
        except IncompleteFileError as exc:
            failed += 1
            print(f"{name}: incomplete: {exc}")
        except OSError as exc:
            failed += 1
            print(f"{name}: cannot be read: {exc.strerror}")
        else:
            print(f"{name}: complete ({check.format}, {check.rows} rows)")
    return 1 if failed else 0


def _limit_json(limit: Limit, **extra: Any) -> str:
    fields = {"utility": limit.utility, "size": limit.size, "max_per_day": limit.max_per_day}
    return json.dumps({**fields, "unit": limit.unit, **extra})


async def _limits_list(settings: Settings, args: argparse.Namespace) -> int:
    del args
    async with _connect(settings) as conn:
        for limit in await list_limits(conn):
            print(_limit_json(limit))
    return 0


async def _limits_set(settings: Settings, args: argparse.Namespace) -> int:
    async with _connect(settings) as conn:
        limit, previous = await set_limit(
            conn,
            args.utility,
            args.size,
            args.max_per_day,
            actor=f"cli:{getpass.getuser()}",
            source="cli",
        )
    print(_limit_json(limit, previous=previous))
    return 0


def _cmd_import_reads(settings: Settings, args: argparse.Namespace, run: Runner) -> int:
    from gateway.billing.readfile import open_read_file  # noqa: PLC0415 - keeps start-up light

    path = Path(args.file)
    try:
        handle = open_read_file(path)
    except OSError as exc:
        raise ReadFileError(f"cannot open {path}: {exc.strerror}") from exc
    with handle:
        return run(_import_reads(settings, path, handle))


def add_commands(sub: Any, run: Runner) -> Any:
    """Add ``export`` and ``import`` to the ``gateway`` command's subparsers; returns the
    ``import`` subparsers, where other parts add their file kinds."""

    def runs(
        func: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]],
    ) -> Callable[[Settings, argparse.Namespace], int]:
        return lambda settings, args: run(func(settings, args))

    export = sub.add_parser("export", help="billing files").add_subparsers(
        dest="export", required=True
    )
    billing = export.add_parser(
        "billing", help="opening/closing reads and consumption per meter register and period"
    )
    billing.add_argument("--period", type=_period, required=True, help="YYYY-MM")
    billing.add_argument("--utility", choices=("electricity", "water"))
    billing.add_argument("--format", choices=("csv", "parquet"), default="csv")
    billing.add_argument("--out", help="output file (default: standard output)")
    billing.set_defaults(func=runs(_export_billing))
    corrections = export.add_parser(
        "corrections", help="superseded estimates: estimated vs actual consumption per period"
    )
    corrections.add_argument("--period", type=_period, help="only this billed period (YYYY-MM)")
    corrections.add_argument(
        "--since", type=_instant, help="only estimates superseded at or after this time"
    )
    corrections.add_argument(
        "--new",
        action="store_true",
        help="only rows no earlier --new report delivered, and mark them delivered",
    )
    corrections.add_argument("--format", choices=("csv", "parquet"), default="csv")
    corrections.add_argument("--out", help="output file (default: standard output)")
    corrections.set_defaults(func=runs(_export_corrections))
    verify = export.add_parser(
        "verify", help="check that export files are complete (CSV trailer, Parquet footer)"
    )
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.set_defaults(func=_cmd_verify)
    billing_cmd = sub.add_parser("billing", help="billing settings").add_subparsers(
        dest="billing", required=True
    )
    limits = billing_cmd.add_parser(
        "limits", help="plausibility limits of person's reads (most use per day)"
    ).add_subparsers(dest="limits", required=True)
    limits.add_parser("list", help="every limit, one JSON line each").set_defaults(
        func=runs(_limits_list)
    )
    limit_set = limits.add_parser(
        "set",
        help="create or change a limit (audited)",
        description="Limits are per day, in kWh for electricity and m3 for water;"
        " SIZE '*' is the utility's default.",
    )
    limit_set.add_argument("utility", choices=UTILITIES)
    limit_set.add_argument("size", type=_size, help="meter size class, e.g. 20mm, or '*'")
    limit_set.add_argument("max_per_day", type=_max_per_day, metavar="MAX_PER_DAY")
    limit_set.set_defaults(func=runs(_limits_set))
    imports = sub.add_parser("import", help="load billing data").add_subparsers(
        dest="import_kind", required=True
    )
    reads = imports.add_parser("reads", help="a meter readers' bulk read file (CSV)")
    reads.add_argument("file", help="CSV file (columns in docs/billing.md)")
    reads.set_defaults(func=lambda settings, args: _cmd_import_reads(settings, args, run))
    return imports
