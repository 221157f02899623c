"""The corrections report on bills written out by hand, and estimates superseded under it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.billing.corrections import correction_bytes, correction_rows
from gateway.billing.export import export_rows
from gateway.billing.period import Period
from tests.billing.helpers import (
    LATER,
    NOV_CLOSE,
    NOV_OPEN,
    add_meter,
    add_readings,
    add_silent_meter,
    csv_rows,
)

NOV = Period(2026, 11)
DEC_CLOSE = datetime(2026, 12, 31, 22, tzinfo=UTC)


def _estimate(
    conn: psycopg.Connection[Any],
    meter_id: str,
    at: datetime,
    value: float,
    superseded: tuple[datetime, float, str] | None = None,
) -> int:
    when, actual, method = superseded or (None, None, None)
    row = conn.execute(
        "INSERT INTO billing_estimates (meter_id, channel, boundary, value, method, daily_rate,"
        " basis_ts, basis_value, superseded_at, actual_value, actual_method)"
        " VALUES (%s, '1.8.0', %s, %s, 'last_3_months', 10, %s, 0, %s, %s, %s) RETURNING id",
        (meter_id, at, value, at - timedelta(days=30), when, actual, method),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _bill(conn: psycopg.Connection[Any], meter_id: str, **columns: object) -> None:
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    conn.execute(
        f"INSERT INTO billing_estimated_bills (meter_id, channel, period, {names})"
        f" VALUES (%s, '1.8.0', '2026-11', {marks})",
        (meter_id, *columns.values()),
    )


def _closing_bill(
    conn: psycopg.Connection[Any],
    meter_id: str,
    estimate: int,
    reads: tuple[float, float],
    consumption: float,
    **columns: object,
) -> None:
    """A November bill that opened on an actual read and closed on estimate ``estimate``."""
    _bill(
        conn,
        meter_id,
        opening_at=NOV_OPEN,
        opening_read=reads[0],
        opening_method="actual",
        closing_at=NOV_CLOSE,
        closing_read=reads[1],
        closing_method="estimated",
        closing_estimate=estimate,
        consumption=consumption,
        **columns,
    )


async def _report(url: str, **kw: Any) -> list[dict[str, str]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        data = b"".join(
            [c async for c in correction_bytes(conn, file_format="csv", now=LATER, **kw)]
        )
    return csv_rows(data)


def _figures(row: dict[str, str]) -> tuple[str, ...]:
    keys = ("boundary", "estimated_consumption", "actual_consumption", "difference")
    return tuple(row[k] for k in keys)


async def test_a_wrap_the_bills_series_confirmed_is_kept_by_its_correction(
    database_url: str,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        add_meter(conn, "W7", "electricity")
        later = NOV_CLOSE + timedelta(hours=3)
        closing = _estimate(conn, "W7", NOV_CLOSE, 2_000.0, (later, 2_100.0, "manual"))
        # billed 88 000 -> 2 000: 14 000, a wrap only the period's series showed (14 % of the
        # register's range is beyond the margin two reads alone are judged by)
        _closing_bill(conn, "W7", closing, (88_000.0, 2_000.0), 14_000.0, series_rollovers=1)
    assert [_figures(r) for r in await _report(database_url)] == [
        ("closing", "14000.000", "14100.000", "100.000")
    ]


async def test_delivered_rows_keep_their_figures_whatever_is_stamped_later(
    database_url: str,
) -> None:
    t1, t2 = NOV_CLOSE + timedelta(hours=2), NOV_CLOSE + timedelta(hours=5)
    with psycopg.connect(database_url, autocommit=True) as conn:
        add_meter(conn, "E7", "electricity")
        opening = _estimate(conn, "E7", NOV_OPEN, 900.0)
        closing = _estimate(conn, "E7", NOV_CLOSE, 1_200.0, (t2, 1_150.0, "manual"))
        _bill(
            conn,
            "E7",
            opening_at=NOV_OPEN,
            opening_read=900.0,
            opening_method="estimated",
            opening_estimate=opening,
            closing_at=NOV_CLOSE,
            closing_read=1_200.0,
            closing_method="estimated",
            closing_estimate=closing,
            consumption=300.0,
        )
    delivered = [_figures(r) for r in await _report(database_url, new=True)]
    assert delivered == [("closing", "300.000", "250.000", "-50.000")]
    with psycopg.connect(database_url, autocommit=True) as conn:
        # the opening was replaced by a transaction that began before the closing's (an
        # export running long): stamped earlier, seen later
        conn.execute(
            "UPDATE billing_estimates SET superseded_at = %s, actual_value = 910,"
            " actual_method = 'interpolated' WHERE id = %s",
            (t1, opening),
        )
    rows = [_figures(r) for r in await _report(database_url)]
    assert rows == [
        ("closing", "300.000", "250.000", "-50.000"),  # as delivered
        ("opening", "250.000", "240.000", "-10.000"),
    ]
    assert [_figures(r) for r in await _report(database_url, new=True)] == rows[1:]


async def test_a_report_stopped_before_its_end_delivers_nothing(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        add_meter(conn, "E8", "electricity")
        closing = _estimate(conn, "E8", NOV_CLOSE, 1_200.0, (LATER, 1_150.0, "manual"))
        _closing_bill(conn, "E8", closing, (900.0, 1_200.0), 300.0)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        chunks = correction_bytes(conn, file_format="csv", now=LATER, new=True)
        first = await anext(chunks)  # the rows, without the trailer
        assert b"E8" in first
        await chunks.aclose()
    # also when the reader took the file's end but did not ask for more (went away)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        chunks = correction_bytes(conn, file_format="csv", now=LATER, new=True)
        taken = [await anext(chunks), await anext(chunks)]
        assert taken[-1].startswith(b"# end rows=1")
        await chunks.aclose()
    assert [r["meter_id"] for r in await _report(database_url, new=True)] == ["E8"]
    assert await _report(database_url, new=True) == []


async def test_a_boundary_settled_while_an_export_ran_gets_no_second_estimate(
    database_url: str,
) -> None:
    from tests.billing.test_estimates import _meter_reader  # noqa: PLC0415

    with psycopg.connect(database_url, autocommit=True) as conn:
        # E5 reads on every boundary: the paused export holds no estimate of its own
        add_meter(conn, "E5", "electricity")
        add_readings(conn, "E5", "1.8.0", [(NOV_OPEN, 1.0), (NOV_CLOSE, 2.0), (DEC_CLOSE, 3.0)])
        add_silent_meter(conn, "E6")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        november = export_rows(conn, NOV, now=LATER, batch_rows=1)
        (e5,) = await anext(november)
        # meanwhile December is exported (estimating 30 November, E6's closing) and a read
        # replaces that estimate
        async with await psycopg.AsyncConnection.connect(database_url) as other:
            _ = [r async for b in export_rows(other, Period(2026, 12), now=LATER) for r in b]
        await _meter_reader(database_url, "2026-12-01T08:00", 1150.0, meter_id="E6")
        (e6,) = await anext(november)
        with pytest.raises(StopAsyncIteration):
            await anext(november)
    assert e5.meter_id == "E5"
    assert (e6.closing_method, str(e6.closing_read)) == ("manual", "1150.000")
    with psycopg.connect(database_url) as conn:
        estimates = conn.execute(
            "SELECT count(*) FROM billing_estimates WHERE meter_id = 'E6' AND boundary = %s",
            (NOV_CLOSE,),
        ).fetchone()
    assert estimates == (1,)


async def test_rows_of_a_report_come_in_batches_of_bills(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for index in range(3):
            meter = f"E{index}"
            add_meter(conn, meter, "electricity")
            closing = _estimate(conn, meter, NOV_CLOSE, 100.0, (LATER, 90.0 + index, "manual"))
            _closing_bill(conn, meter, closing, (50.0, 100.0), 50.0)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        batches = [b async for b in correction_rows(conn, now=LATER)]
    assert [str(r.difference) for b in batches for r in b] == ["-10.000", "-9.000", "-8.000"]
