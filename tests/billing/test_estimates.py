"""Estimates at period boundaries and their corrections, against the real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.billing.core import ReadSource
from gateway.billing.corrections import correction_bytes, correction_rows
from gateway.billing.export import export_bytes
from gateway.billing.formats import CorrectionRow
from gateway.billing.period import Period
from gateway.billing.reads import ReadSubmission, submit_read
from tests.billing.helpers import (
    NOV_CLOSE,
    NOV_OPEN,
    add_meter,
    add_readings,
    add_silent_meter,
    bill_november_then_read,
    csv_rows,
    run_cli,
    series,
    utc,
)

NOV = Period(2026, 11)
DEC = Period(2026, 12)
LATER = datetime(2027, 1, 15, tzinfo=UTC)  # a "now" after December is billed too


@pytest.fixture
def silent_meter(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        add_silent_meter(conn)
    return database_url


async def _export(url: str, period: Period = NOV, now: datetime = LATER) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        data = b"".join([c async for c in export_bytes(conn, period, file_format="csv", now=now)])
    rows = csv_rows(data)
    assert len(rows) == 1
    return rows[0]


async def _corrections(url: str, **kw: object) -> list[dict[str, str]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        data = b"".join(
            [c async for c in correction_bytes(conn, file_format="csv", now=LATER, **kw)]  # type: ignore[arg-type]
        )
    return csv_rows(data)


async def _meter_reader(
    url: str, when: str, value: float, *, meter_id: str = "E5", source: ReadSource | None = None
) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        result = await submit_read(
            conn,
            ReadSubmission(
                meter_id=meter_id,
                ts=utc(when),
                value=value,
                source=source or ReadSource.METER_READER,
                reader="R. Mokoena",
            ),
            actor="test",
        )
    assert result.read.status == "accepted"


def _figures(row: dict[str, str]) -> tuple[str, ...]:
    keys = ("period", "boundary", "estimated_read", "actual_read", "actual_method")
    keys += ("estimated_consumption", "actual_consumption", "difference")
    return tuple(row[k] for k in keys)


async def test_estimate_then_correction_by_a_later_read(silent_meter: str) -> None:
    url = silent_meter
    row = await _export(url)
    # basis 800 on 20 Oct 00:00Z; rate 800 / 80 days = 10/day;
    # opening 31 Oct 22:00Z = 11 d 22 h later -> 800 + 119.1667
    # closing 30 Nov 22:00Z = 41 d 22 h later -> 800 + 419.1667
    assert (row["opening_method"], row["opening_read"]) == ("estimated", "919.167")
    assert (row["closing_method"], row["closing_read"]) == ("estimated", "1219.167")
    assert row["opening_estimate"] == row["closing_estimate"] == "last_3_months"
    assert row["consumption"] == "300.000"
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT ts, value FROM reading_data WHERE quality = 'estimated' ORDER BY ts"
        ).fetchall()
    assert [ts for ts, _ in stored] == [NOV_OPEN, NOV_CLOSE]
    assert stored[1][1] == pytest.approx(1219.1667, abs=1e-3)

    # exporting again bills the stored estimates, not new ones
    assert await _export(url) == row

    # a meter reader reads 1150 on 1 December 10:00 local (08:00Z), inside the 24 h window
    await _meter_reader(url, "2026-12-01T08:00", 1150.0)

    row = await _export(url)
    assert (row["closing_method"], row["closing_read"]) == ("manual", "1150.000")
    assert (row["opening_method"], row["opening_read"]) == ("estimated", "919.167")
    assert row["consumption"] == "230.833"
    with psycopg.connect(url) as conn:
        left = conn.execute("SELECT ts FROM reading_data WHERE quality = 'estimated'").fetchall()
        states = conn.execute(
            "SELECT boundary, superseded_at IS NOT NULL, actual_value, actual_method"
            " FROM billing_estimates ORDER BY boundary"
        ).fetchall()
    assert left == [(NOV_OPEN,)]  # the superseded estimate's reading is gone
    assert [(b, s, a, m) for b, s, a, m in states] == [
        (NOV_OPEN, False, None, None),
        (NOV_CLOSE, True, 1150.0, "manual"),
    ]

    # November was billed on the estimate: 300 billed, 230.833 used
    nov = ("2026-11", "closing", "1219.167", "1150.000", "manual", "300.000", "230.833", "-69.167")
    corrections = await _corrections(url)
    assert [_figures(r) for r in corrections] == [nov]
    assert Decimal(corrections[0]["difference"]) == Decimal("-69.167")
    # December, billed after the read replaced the estimate, has nothing to correct
    december = await _export(url, DEC)
    assert (december["opening_method"], december["opening_read"]) == ("manual", "1150.000")
    assert [_figures(r) for r in await _corrections(url)] == [nov]
    assert await _corrections(url, period=DEC) == []
    assert [_figures(r) for r in await _corrections(url, period=NOV)] == [nov]


async def test_both_periods_billed_on_the_estimate_are_corrected(silent_meter: str) -> None:
    url = silent_meter
    await _export(url)
    december = await _export(url, DEC)
    # December closes on 31 Dec 22:00Z, 72 d 22 h after the basis -> 800 + 729.1667
    assert (december["opening_read"], december["closing_read"]) == ("1219.167", "1529.167")
    assert december["consumption"] == "310.000"
    await _meter_reader(url, "2026-12-01T08:00", 1150.0)
    corrections = await _corrections(url)
    # the estimate closed November and opened December: one adjusts down, the other up
    assert [_figures(r) for r in corrections] == [
        ("2026-11", "closing", "1219.167", "1150.000", "manual", "300.000", "230.833", "-69.167"),
        ("2026-12", "opening", "1219.167", "1150.000", "manual", "310.000", "379.167", "69.167"),
    ]


async def test_late_telemetry_supersedes_an_estimate_and_is_corrected(silent_meter: str) -> None:
    url = silent_meter
    await _export(url)
    await _meter_reader(url, "2026-12-01T08:00", 1150.0)
    with psycopg.connect(url, autocommit=True) as conn:
        # the meter's own readings from either side of 31 Oct 22:00Z arrive late (backfilled)
        conn.execute(
            "INSERT INTO reading_data (meter_id, channel, ts, value, quality) VALUES"
            " ('E5', '1.8.0', '2026-10-31T20:00Z', 900, 'backfilled'),"
            " ('E5', '1.8.0', '2026-11-01T00:00Z', 904, 'backfilled')"
        )
        (since,) = conn.execute("SELECT clock_timestamp()").fetchone()  # type: ignore[misc]
    corrections = await _corrections(url, period=NOV)
    # opening interpolated halfway: 902; November now used 1150 - 902 = 248
    second = ("2026-11", "opening", "919.167", "902.000", "interpolated", "230.833", "248.000")
    assert [_figures(r) for r in corrections] == [
        ("2026-11", "closing", "1219.167", "1150.000", "manual", "300.000", "230.833", "-69.167"),
        (*second, "17.167"),
    ]
    # the rows of a period add up to the whole correction
    assert sum(Decimal(r["difference"]) for r in corrections) == Decimal("248.000") - Decimal(
        "300.000"
    )
    # since the late readings: only the new adjustment, so nothing is adjusted twice
    assert [_figures(r) for r in await _corrections(url, since=since)] == [(*second, "17.167")]
    with psycopg.connect(url) as conn:
        left = conn.execute("SELECT count(*) FROM reading_data WHERE quality = 'estimated'")
        assert left.fetchone() == (0,)


async def test_a_period_that_has_not_ended_is_not_estimated_ahead(silent_meter: str) -> None:
    row = await _export(silent_meter, now=utc("2026-11-15T00:00"))
    assert (row["opening_method"], row["opening_read"]) == ("estimated", "919.167")
    assert (row["closing_method"], row["closing_read"], row["consumption"]) == (
        "unavailable",
        "",
        "",
    )
    with psycopg.connect(silent_meter) as conn:
        estimates = conn.execute("SELECT boundary FROM billing_estimates").fetchall()
        bills = conn.execute("SELECT count(*) FROM billing_estimated_bills").fetchone()
        stored = conn.execute("SELECT max(ts) FROM reading_data").fetchone()
    assert estimates == [(NOV_OPEN,)]
    assert bills == (0,), "nothing was billed: the period has no closing read"
    assert stored == (NOV_OPEN,)


async def test_corrections_export_follows_the_configured_policy(
    silent_meter: str, tmp_path: Path
) -> None:
    await bill_november_then_read(silent_meter)
    out = tmp_path / "corrections.csv"

    def november(**env: str) -> list[tuple[str, str, str]]:
        args = ("export", "corrections", "--period", "2026-11", "--out", str(out))
        done = run_cli(silent_meter, *args, **env)
        assert done.returncode == 0, done.stderr
        rows = csv_rows(out.read_bytes())
        return [(r["boundary"], r["estimated_consumption"], r["actual_consumption"]) for r in rows]

    closing = ("closing", "300.000", "230.833")
    # 24 h: the 2 November read (935, 30 h after the opening) does not cover the opening
    assert november() == [closing]
    # 48 h: it does; the report supersedes the opening estimate 919.167 with it
    assert november(GATEWAY_BILLING_INTERPOLATION_HOURS="48") == [
        closing,
        ("opening", "230.833", "215.000"),
    ]


async def test_import_follows_the_configured_policy(silent_meter: str, tmp_path: Path) -> None:
    await _export(silent_meter)  # November billed on estimates

    def load(line: str, **env: str) -> None:
        path = tmp_path / "round.csv"
        path.write_text(f"meter_id,read_at,value,source\n{line}\n", encoding="utf-8")
        done = run_cli(silent_meter, "import", "reads", str(path), **env)
        assert (done.returncode, done.stdout) == (
            0,
            "round.csv: accepted 1, rejected 0, unchanged 0, errors 0\n",
        ), done.stderr

    def closing() -> tuple[bool, float | None]:
        with psycopg.connect(silent_meter) as conn:
            row = conn.execute(
                "SELECT superseded_at IS NOT NULL, actual_value FROM billing_estimates"
                " WHERE boundary = %s",
                (NOV_CLOSE,),
            ).fetchone()
        assert row is not None
        return row[0], row[1]

    # 30 h before the closing boundary: outside the default 24 h window
    load("E5,2026-11-29T16:00:00Z,1200,meter_reader")
    assert closing() == (False, None)
    # 29 h before it, inside a configured 48 h window: the estimate is superseded
    load("E5,2026-11-29T17:00:00Z,1201,meter_reader", GATEWAY_BILLING_INTERPOLATION_HOURS="48")
    assert closing() == (True, 1201.0)


async def test_same_month_last_year_policy_and_fallback(database_url: str) -> None:
    from gateway.billing.core import BillingPolicy, EstimateMethod  # noqa: PLC0415
    from gateway.billing.export import export_rows  # noqa: PLC0415

    with psycopg.connect(database_url, autocommit=True) as conn:
        add_meter(conn, "E6", "electricity")
        # November 2025: 2 kWh/day (hourly); then one read on 1 October 2026
        add_readings(
            conn,
            "E6",
            "1.8.0",
            series(utc("2025-10-31T22:00"), utc("2025-11-30T22:00"), timedelta(hours=1), 0, 2 / 24),
        )
        add_readings(conn, "E6", "1.8.0", [(utc("2026-10-01T00:00"), 5000.0)])
    policy = BillingPolicy(estimate_method=EstimateMethod.SAME_MONTH_LAST_YEAR)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = [r async for b in export_rows(conn, NOV, policy=policy, now=LATER) for r in b]
    (row,) = rows
    # opening 31 Oct 2026 22:00Z: October 2025 holds one reading (no span), and the 3 months
    # before the basis (1 Oct 2026, 5000) hold only the basis: nothing to estimate from
    assert (row.opening_method, row.opening_read, row.consumption) == ("unavailable", None, None)
    assert row.closing_estimate == "same_month_last_year"
    # closing: 30 Nov 2026 22:00Z; Nov 2025 used 60 kWh in 30 days -> 2/day; from the basis
    # 5000 on 1 Oct 00:00Z, 60 d 22 h -> 5000 + 121.8333
    assert row.closing_read == Decimal("5121.833")


async def test_a_read_does_not_wait_for_an_export_holding_the_estimate(silent_meter: str) -> None:
    url = silent_meter
    await _export(url)
    async with await psycopg.AsyncConnection.connect(url) as export:
        # an export still running has superseded (so locked) the closing estimate
        await export.execute(
            "SELECT id FROM billing_estimates WHERE boundary = %s FOR UPDATE", (NOV_CLOSE,)
        )
        await asyncio.wait_for(_meter_reader(url, "2026-12-01T08:00", 1150.0), 10)
        await export.rollback()  # the export was abandoned: the estimate is still current
    with psycopg.connect(url) as conn:
        current = conn.execute(
            "SELECT count(*) FROM billing_estimates WHERE superseded_at IS NULL"
        ).fetchone()
    assert current == (2,)
    # the next corrections report supersedes it with the accepted read
    corrections = await _corrections(url)
    assert [(r["boundary"], r["actual_read"]) for r in corrections] == [("closing", "1150.000")]


async def test_same_month_last_year_is_the_meters_own_calendar_month(database_url: str) -> None:
    from gateway.billing.core import BillingPolicy, EstimateMethod  # noqa: PLC0415
    from gateway.billing.export import export_rows  # noqa: PLC0415

    with psycopg.connect(database_url, autocommit=True) as conn:
        add_meter(conn, "E7", "electricity")
        # October 2025 (local) at 10 kWh/day, November 2025 at 2 kWh/day, hourly; then one
        # read on 1 October 2026
        october = series(
            utc("2025-09-30T22:00"), utc("2025-10-31T21:00"), timedelta(hours=1), 0, 10 / 24
        )
        november = series(
            utc("2025-10-31T22:00"), utc("2025-11-30T22:00"), timedelta(hours=1), 310, 2 / 24
        )
        add_readings(conn, "E7", "1.8.0", [*october, *november])
        add_readings(conn, "E7", "1.8.0", [(utc("2026-10-01T00:00"), 5000.0)])
    policy = BillingPolicy(estimate_method=EstimateMethod.SAME_MONTH_LAST_YEAR)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        (row,) = [r async for b in export_rows(conn, NOV, policy=policy, now=LATER) for r in b]
    # November 2025 in Johannesburg is 31 Oct 22:00Z - 30 Nov 22:00Z: 2 kWh/day exactly (a
    # window on UTC dates would start on 30 October and take in a day of October's 10)
    assert row.closing_estimate == "same_month_last_year"
    assert row.closing_read == Decimal("5121.833")  # 5000 + 2 x 60 d 22 h


@pytest.mark.parametrize("first", [True, False], ids=["first-export", "re-export"])
async def test_an_estimate_superseded_while_an_export_runs(silent_meter: str, first: bool) -> None:
    from gateway.billing.export import export_rows  # noqa: PLC0415

    with psycopg.connect(silent_meter, autocommit=True) as conn:
        add_silent_meter(conn, "E6")
    if not first:
        async with await psycopg.AsyncConnection.connect(silent_meter) as conn:
            assert len([r async for b in export_rows(conn, NOV, now=LATER) for r in b]) == 2
    async with await psycopg.AsyncConnection.connect(silent_meter) as conn:
        rows = export_rows(conn, NOV, now=LATER, batch_rows=1)
        (e5,) = await anext(rows)
        # meanwhile a meter reader's read of E6 is accepted (and supersedes its estimate)
        await _meter_reader(silent_meter, "2026-12-01T08:00", 1150.0, meter_id="E6")
        (e6,) = await anext(rows)
        with pytest.raises(StopAsyncIteration):
            await anext(rows)
    assert (e5.meter_id, e6.meter_id) == ("E5", "E6")
    with psycopg.connect(silent_meter) as conn:
        bills = conn.execute(
            "SELECT meter_id, closing_method, closing_estimate IS NOT NULL"
            " FROM billing_estimated_bills ORDER BY meter_id"
        ).fetchall()
    assert bills == [
        ("E5", "estimated", True),
        ("E6", e6.closing_method, e6.closing_method == "estimated"),
    ]
    # whichever way the export billed E6's closing, the report corrects what it billed
    corrections = await _corrections(silent_meter)
    e6_rows = [r for r in corrections if r["meter_id"] == "E6"]
    if e6.closing_method == "estimated":
        assert [(r["boundary"], r["actual_read"]) for r in e6_rows] == [("closing", "1150.000")]
    else:
        assert e6_rows == []


async def test_a_boundary_keeps_the_read_that_replaced_its_estimate(silent_meter: str) -> None:
    url = silent_meter
    await _export(url)
    # a customer's read 10 h after the closing boundary replaces the estimate (one-sided)
    await _meter_reader(url, "2026-12-01T08:00", 1150.0, source=ReadSource.CUSTOMER)
    correction = [_figures(r) for r in await _corrections(url)]
    assert correction == [
        ("2026-11", "closing", "1219.167", "1150.000", "customer", "300.000", "230.833", "-69.167")
    ]
    # then the meter's own reading at the boundary arrives: the bill was corrected with 1150, so
    # November and December keep that read, and the report stays as it was
    with psycopg.connect(url, autocommit=True) as conn:
        add_readings(conn, "E5", "1.8.0", [(NOV_CLOSE, 1140.0)])
    november = await _export(url)
    assert (november["closing_read"], november["closing_method"]) == ("1150.000", "customer")
    december = await _export(url, DEC)
    assert (december["opening_read"], december["opening_method"]) == ("1150.000", "customer")
    assert [_figures(r) for r in await _corrections(url)] == correction


async def test_new_corrections_are_delivered_once(silent_meter: str) -> None:
    url = silent_meter
    await _export(url)
    await _meter_reader(url, "2026-12-01T08:00", 1150.0)
    closing = ("2026-11", "closing", "1219.167", "1150.000", "manual", "300.000", "230.833")
    assert [_figures(r) for r in await _corrections(url, new=True)] == [(*closing, "-69.167")]
    assert await _corrections(url, new=True) == []
    # the whole report still shows it
    assert [_figures(r) for r in await _corrections(url)] == [(*closing, "-69.167")]
    with psycopg.connect(url, autocommit=True) as conn:
        add_readings(
            conn,
            "E5",
            "1.8.0",
            [(utc("2026-10-31T20:00"), 900.0), (utc("2026-11-01T00:00"), 904.0)],
        )

    # a report without --new settles the opening with those readings (and delivers nothing)
    assert len(await _corrections(url)) == 2

    # two --new reports at once: the second waits for the first and delivers nothing again
    async def report(conn: psycopg.AsyncConnection[Any]) -> list[list[CorrectionRow]]:
        return [b async for b in correction_rows(conn, new=True, now=LATER)]

    async with (
        await psycopg.AsyncConnection.connect(url) as first,
        await psycopg.AsyncConnection.connect(url) as second,
    ):
        rows = correction_rows(first, new=True, now=LATER)
        (batch,) = [await anext(rows)]
        racing = asyncio.create_task(report(second))
        await asyncio.sleep(0.5)
        assert not racing.done(), "the second report did not wait for the first"
        with pytest.raises(StopAsyncIteration):
            await anext(rows)
        assert await asyncio.wait_for(racing, 10) == []
    opening = ("2026-11", "opening", "919.167", "902.000", "interpolated", "230.833", "248.000")
    assert [(r.period, r.boundary, str(r.difference)) for r in batch] == [
        ("2026-11", "opening", "17.167")
    ]
    assert await _corrections(url, new=True) == []
    assert [_figures(r) for r in await _corrections(url)] == [
        (*closing, "-69.167"),
        (*opening, "17.167"),
    ]
    with psycopg.connect(url) as conn:
        deliveries = conn.execute(
            "SELECT detail->>'bills' FROM audit_log"
            " WHERE action = 'billing.corrections.deliver' ORDER BY id"
        ).fetchall()
    assert deliveries == [("1",), ("1",)], "each delivery is audited, an empty one is not"
