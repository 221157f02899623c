"""Building known fleets in a test database."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from gateway.billing.core import ReadSource
from gateway.billing.export import export_bytes
from gateway.billing.period import Period
from gateway.billing.reads import ReadSubmission, submit_read
from gateway.detection.model import Rules
from gateway.detection.service import evaluate_windows
from gateway.detection.store import Window

ZA = "Africa/Johannesburg"  # UTC+2 all year: November 2026 opens 2026-10-31T22:00Z
NOV_OPEN = datetime(2026, 10, 31, 22, tzinfo=UTC)
NOV_CLOSE = datetime(2026, 11, 30, 22, tzinfo=UTC)
LATER = datetime(2027, 1, 15, tzinfo=UTC)
"""An export's "now" after November and December are both billable."""
ROOT = Path(__file__).resolve().parents[2]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def add_meter(conn: psycopg.Connection, meter_id: str, utility: str, tz: str = ZA) -> None:
    conn.execute(
        "INSERT INTO meters (meter_id, utility, payment, verified, time_zone)"
        " VALUES (%s, %s, 'postpaid', true, %s)",
        (meter_id, utility, tz),
    )


def add_readings(
    conn: psycopg.Connection,
    meter_id: str,
    channel: str,
    points: Iterable[tuple[datetime, float]],
) -> None:
    with conn.cursor().copy(
        "COPY reading_data (meter_id, channel, ts, value, quality) FROM STDIN"
    ) as copy:
        for ts, value in points:
            copy.write_row((meter_id, channel, ts, value, "measured"))


def series(
    start: datetime, end: datetime, step: timedelta, first: float, per_hour: float
) -> list[tuple[datetime, float]]:
    out = []
    ts = start
    while ts <= end:
        out.append((ts, first + per_hour * (ts - start).total_seconds() / 3600))
        ts += step
    return out


async def run_detection(url: str, *meter_ids: str) -> None:
    """Judge the meters' stored readings with the detection rules and store the alerts they
    raise, as the detection loop does."""
    lo, hi = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        windows = [Window(meter_id, lo, hi) for meter_id in meter_ids]
        await evaluate_windows(conn, windows, Rules(), datetime.now(UTC))


_TRAILER = re.compile(r"# end rows=(\d+) sha256=([0-9a-f]{64})\r\n")


def split_trailer(data: bytes) -> tuple[bytes, int, str] | None:
    """A CSV file's body, and the rows and hash its trailer states; None without a trailer."""
    if not data.endswith(b"\r\n"):
        return None
    start = data.rfind(b"\n", 0, len(data) - 2) + 1
    match = _TRAILER.fullmatch(data[start:].decode("ascii", "replace"))
    if match is None:
        return None
    return data[:start], int(match[1]), match[2]


def csv_rows(data: bytes) -> list[dict[str, str]]:
    """The records of a complete CSV export, after checking its trailer the way a consumer
    would: the SHA-256 of the bytes before it, and the record count."""
    parts = split_trailer(data)
    assert parts is not None, f"no trailer at the end of {data[-200:]!r}"
    body, rows, digest = parts
    assert hashlib.sha256(body).hexdigest() == digest
    records = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
    assert len(records) == rows
    return records


def run_cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS…`` on database ``url``; ``env``: GATEWAY_BILLING_* settings, else defaults."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_BILLING_")}
    environ.update(GATEWAY_DATABASE_URL=url, GATEWAY_LOG_FORMAT="text", **env)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        check=False,
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=120,
    )


def add_silent_meter(conn: psycopg.Connection, meter_id: str = "E5") -> None:
    """E5: daily reads from 1 August (0) to 20 October (800), then silence: 10 kWh/day."""
    add_meter(conn, meter_id, "electricity")
    add_readings(
        conn,
        meter_id,
        "1.8.0",
        series(utc("2026-08-01T00:00"), utc("2026-10-20T00:00"), timedelta(days=1), 0, 10 / 24),
    )


async def bill_november_then_read(url: str) -> None:
    """E5's November billed on estimates (opening 919.167, closing 1219.167), then a meter
    reader's reads at 2 November 04:00Z (935: 30 h after the opening, outside the default 24 h
    window) and 1 December 08:00Z (1150: it supersedes the closing estimate)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        async for _ in export_bytes(conn, Period(2026, 11), file_format="csv", now=LATER):
            pass
        for when, value in (("2026-11-02T04:00", 935.0), ("2026-12-01T08:00", 1150.0)):
            read = ReadSubmission("E5", utc(when), value, ReadSource.METER_READER)
            assert (await submit_read(conn, read, actor="test")).read.status == "accepted"
