"""Building known fleets in a test database."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import psycopg

from gateway.detection.model import Rules
from gateway.detection.service import evaluate_windows
from gateway.detection.store import Window

ZA = "Africa/Johannesburg"  # UTC+2 all year: November 2026 opens 2026-10-31T22:00Z
NOV_OPEN = datetime(2026, 10, 31, 22, tzinfo=UTC)
NOV_CLOSE = datetime(2026, 11, 30, 22, tzinfo=UTC)


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
