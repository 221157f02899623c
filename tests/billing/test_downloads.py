"""Billing downloads on a running gateway: their own connection budget, and a file that a
consumer can tell is incomplete when the stream breaks."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.billing.errors import IncompleteFileError
from gateway.billing.export import export_bytes
from gateway.billing.period import Period
from gateway.billing.verify import check_csv, check_parquet
from gateway.http.exports import ExportSession
from gateway.http.security import Role
from gateway.service import GatewayHandle
from gateway.settings import Settings
from tests.billing.helpers import (
    NOV_CLOSE,
    NOV_OPEN,
    add_meter,
    add_readings,
    csv_rows,
    series,
    split_trailer,
    utc,
)
from tests.plugins.auth import AuthHeaders
from tests.plugins.gateway import gateway_running, make_settings

EXPORT = "/billing/export?period=2026-11"
FLEET = 6000  # more than one batch of 5 000 rows: the first batch is sent before the last


@pytest.fixture
def settings(database_url: str, mqtt_url: str, topic_prefix: str) -> Settings:
    return make_settings(
        database_url,
        mqtt_url,
        topic_prefix,
        db_pool_min=1,
        db_pool_max=2,
        http_export_connections=2,
        detection_enabled=False,
    )


@pytest.fixture
def fleet(database_url: str) -> str:
    """``FLEET`` meters read at both boundaries, then ``Z9``, silent since 20 October: its
    boundaries are estimated (and stored) when the export reaches it, in its last batch."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meters (meter_id, utility, payment, verified, time_zone)"
            " SELECT 'M' || lpad(i::text, 5, '0'), 'electricity', 'postpaid', true,"
            " 'Africa/Johannesburg' FROM generate_series(1, %s) i",
            (FLEET,),
        )
        conn.execute(
            "INSERT INTO reading_data (meter_id, channel, ts, value)"
            " SELECT 'M' || lpad(i::text, 5, '0'), '1.8.0', b.ts, i + b.v"
            " FROM generate_series(1, %s) i, (VALUES (%s::timestamptz, 0), (%s, 100)) b(ts, v)",
            (FLEET, NOV_OPEN, NOV_CLOSE),
        )
    add_meter_with_history(database_url, "Z9")
    return database_url


def add_meter_with_history(url: str, meter_id: str) -> None:
    """A meter read daily from 1 August to 20 October, silent since: estimated in November."""
    with psycopg.connect(url, autocommit=True) as conn:
        add_meter(conn, meter_id, "electricity")
        daily = series(utc("2026-08-01T00:00"), utc("2026-10-20T00:00"), timedelta(days=1), 0, 1)
        add_readings(conn, meter_id, "1.8.0", daily)


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[GatewayHandle]:
    async with gateway_running(settings) as handle:
        yield handle


@pytest.fixture
async def http(
    running: GatewayHandle, database_url: str, auth_headers: AuthHeaders
) -> AsyncIterator[httpx.AsyncClient]:
    headers = await auth_headers(database_url, Role.OPERATOR)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{running.http_port}", headers=headers, timeout=60
    ) as client:
        yield client


@pytest.fixture
def lock(database_url: str) -> Iterator[Any]:
    """A transaction of the test's own, to take table locks in (rolled back at the end)."""
    with psycopg.connect(database_url) as conn:
        yield conn
        conn.rollback()


def _download_backends(url: str, waiting: bool) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'gateway-export'"
            " AND datname = current_database()"
            " AND (NOT %s OR wait_event_type = 'Lock')",
            (waiting,),
        ).fetchall()
    return [row[0] for row in rows]


def _idle_downloads(url: str) -> bool:
    """Every download connection is back in its pool, outside any transaction."""
    with psycopg.connect(url, autocommit=True) as conn:
        states = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE application_name = 'gateway-export'"
            " AND datname = current_database()"
        ).fetchall()
    return all(state == ("idle",) for state in states)


async def _until(probe: Any, timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if value := await asyncio.to_thread(probe):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
async def test_a_stream_cut_midway_is_a_file_the_consumer_can_tell_is_incomplete(
    fleet: str, running: GatewayHandle, http: httpx.AsyncClient, lock: Any, file_format: str
) -> None:
    # Estimates cannot be written while the test holds this lock (reads still can): the
    # export streams its first batch, then waits at Z9's estimate, mid-file.
    lock.execute("LOCK TABLE billing_estimates IN SHARE MODE")
    received = bytearray()
    failure: Exception | None = None
    async with http.stream("GET", f"{EXPORT}&format={file_format}") as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()
        received.extend(await anext(chunks))  # the first batch has arrived
        [pid] = await _until(lambda: _download_backends(fleet, waiting=True))
        with psycopg.connect(fleet, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        lock.rollback()
        try:
            async for chunk in chunks:
                received.extend(chunk)
        except httpx.HTTPError as exc:  # the transfer did not complete
            failure = exc
    assert isinstance(failure, httpx.RemoteProtocolError), failure
    assert len(received) > 0

    # What a consumer holds: the bytes before the cut. It can tell they are not the file.
    data = bytes(received)
    if file_format == "csv":
        assert split_trailer(data) is None  # the last line is not a trailer
        assert data.count(b"\r\n") > 1000  # a good part of the file did arrive
        with pytest.raises(IncompleteFileError):
            check_csv(io.BytesIO(data))
    else:
        assert data.startswith(b"PAR1")
        with pytest.raises((pa.ArrowInvalid, OSError)):
            pq.ParquetFile(io.BytesIO(data))
        with pytest.raises(IncompleteFileError):
            check_parquet(io.BytesIO(data))

    # The export's transaction died with its connection: no estimate was kept.
    with psycopg.connect(fleet) as conn:
        assert conn.execute("SELECT count(*) FROM billing_estimates").fetchone() == (0,)
    # The next download gets a fresh connection and the whole file.
    again = await http.get(f"{EXPORT}&format={file_format}")
    assert again.status_code == 200
    if file_format == "csv":
        rows = csv_rows(again.content)
        assert len(rows) == FLEET + 1
        assert rows[-1]["meter_id"] == "Z9" and rows[-1]["opening_method"] == "estimated"
        assert check_csv(io.BytesIO(again.content)).rows == FLEET + 1
    else:
        assert pq.read_table(io.BytesIO(again.content)).num_rows == FLEET + 1
        assert check_parquet(io.BytesIO(again.content)).rows == FLEET + 1


async def test_downloads_beyond_their_budget_are_503_and_leave_the_api_alone(
    fleet: str, running: GatewayHandle, http: httpx.AsyncClient, lock: Any
) -> None:
    # The export's query cannot start while this lock is held: both downloads hold their
    # connection, waiting.
    lock.execute("LOCK TABLE billing_estimates IN ACCESS EXCLUSIVE MODE")
    first = asyncio.create_task(http.get(EXPORT))
    second = asyncio.create_task(http.get(EXPORT + "&format=parquet"))
    await _until(lambda: len(_download_backends(fleet, waiting=True)) == 2)

    refused = await http.get(EXPORT)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    corrections = await http.get("/billing/corrections")
    assert corrections.status_code == 503  # the same budget
    # Credentials are checked before a slot is taken: a stranger is told 401, not 503.
    stranger = await http.get(EXPORT, headers={"Authorization": "Bearer not-a-key"})
    assert stranger.status_code == 401
    # The API's own pool (two connections here) is untouched by the downloads.
    for _ in range(5):
        assert (await http.get("/billing/reviews")).status_code == 200
        assert (await http.get("/meters/Z9")).status_code == 200

    lock.rollback()
    done = await asyncio.gather(first, second)
    assert [r.status_code for r in done] == [200, 200]
    assert len(csv_rows(done[0].content)) == FLEET + 1
    assert pq.read_table(io.BytesIO(done[1].content)).num_rows == FLEET + 1
    # The budget is free again.
    assert (await http.get("/billing/corrections")).status_code == 200


async def test_a_client_leaving_midway_keeps_nothing_of_the_export(
    fleet: str, running: GatewayHandle, http: httpx.AsyncClient, lock: Any
) -> None:
    add_meter_with_history(fleet, "Z8")
    # Z8's estimates go in; Z9's wait for this uncommitted estimate of the test's own.
    lock.execute(
        "INSERT INTO billing_estimates (meter_id, channel, boundary, value, method,"
        " daily_rate, basis_ts, basis_value)"
        " VALUES ('Z9', '1.8.0', %s, 1, 'last_3_months', 1, %s, 1)",
        (NOV_OPEN, NOV_OPEN),
    )
    async with http.stream("GET", EXPORT) as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()
        await anext(chunks)
        await _until(lambda: _download_backends(fleet, waiting=True))
        await chunks.aclose()
    # The client is gone while its export waits. The export must end without committing
    # what it wrote (Z8's estimates), and its slot must come free.
    lock.rollback()
    await _until(lambda: _idle_downloads(fleet))
    with psycopg.connect(fleet) as conn:
        assert conn.execute("SELECT count(*) FROM billing_estimates").fetchone() == (0,)
    again = [await http.get(EXPORT), await http.get(EXPORT), await http.get(EXPORT)]
    assert [r.status_code for r in again] == [200, 200, 200]
    rows = csv_rows(again[0].content)
    assert [(r["meter_id"], r["opening_method"]) for r in rows[-2:]] == [
        ("Z8", "estimated"),
        ("Z9", "estimated"),
    ]


async def test_a_stream_closed_between_batches_rolls_back_before_the_pool_commits(
    fleet: str,
) -> None:
    """What the download dependency does when a response ends early: the export's generator
    is suspended after a batch, inside its transaction; closing the session rolls that back
    (half an export's estimates) and hands the connection back to the pool clean."""
    add_meter_with_history(fleet, "A0")  # estimated in the first batch
    async with AsyncConnectionPool(fleet, min_size=1, max_size=1, open=False) as pool:
        async with pool.connection() as conn:
            session = ExportSession(conn, "test export")
            body = session.stream(export_bytes(conn, Period(2026, 11), file_format="csv"))
            first = await anext(aiter(body))
            assert first.startswith(b"period,meter_id") and b"\r\n2026-11,A0," in first
            await session.close()
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM billing_estimates")
            assert await cur.fetchone() == (0,)
            cur = await conn.execute("SELECT count(*) FROM reading_data WHERE meter_id = 'A0'")
            assert await cur.fetchone() == (81,)  # the estimated readings went too
