"""The billing export against the real database, with hand-computed expectations."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import psycopg
import pyarrow.parquet as pq
import pytest

from gateway.billing.export import export_bytes
from gateway.billing.formats import EXPORT_SCHEMA
from gateway.billing.period import Period
from tests.billing.helpers import (
    LATER,
    NOV_CLOSE,
    NOV_OPEN,
    add_meter,
    add_readings,
    csv_rows,
    run_detection,
    series,
    utc,
)

NOV = Period(2026, 11)


@pytest.fixture
async def fleet(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # E1: hourly, 0.5 kWh/h, readings on both boundaries -> actual / actual, 720 h * 0.5
        add_meter(conn, "E1", "electricity")
        add_readings(
            conn,
            "E1",
            "1.8.0",
            series(utc("2026-10-30T00:00"), utc("2026-12-02T00:00"), timedelta(hours=1), 1000, 0.5),
        )
        # E2: sparse; 500 at 21:00Z and 506 at 03:00Z -> 501 at 22:00Z;
        #     800 at 20:00Z and 808 at 00:00Z -> 804 at 22:00Z; consumption 303
        add_meter(conn, "E2", "electricity")
        add_readings(
            conn,
            "E2",
            "1.8.0",
            [
                (utc("2026-10-31T21:00"), 500.0),
                (utc("2026-11-01T03:00"), 506.0),
                (utc("2026-11-15T12:00"), 650.0),
                (utc("2026-11-30T20:00"), 800.0),
                (utc("2026-12-01T00:00"), 808.0),
            ],
        )
        # W1: water register wrapping at 100 000 across the closing boundary:
        #     99 990 at 21:00Z, 30 at 00:00Z: 40 m3 in 3 h -> 100 003.333 = 3.333 at 22:00Z;
        #     opening 99 900 exactly -> consumption 100 000 - 99 900 + 3.333 = 103.333
        add_meter(conn, "W1", "water")
        add_readings(
            conn,
            "W1",
            "24.2.1",
            [
                (NOV_OPEN, 99_900.0),
                (utc("2026-11-15T00:00"), 99_950.0),
                (utc("2026-11-30T21:00"), 99_990.0),
                (utc("2026-12-01T00:00"), 30.0),
            ],
        )
        # E3: a rollback inside the period (150 -> 120), boundaries exact: 100 -> 200; the row
        # is flagged from detection's alert
        add_meter(conn, "E3", "electricity")
        add_readings(
            conn,
            "E3",
            "1.8.0",
            [
                (NOV_OPEN, 100.0),
                (utc("2026-11-10T00:00"), 150.0),
                (utc("2026-11-11T00:00"), 120.0),
                (NOV_CLOSE, 200.0),
            ],
        )
        # E1 also exports energy on 2.8.0, 0.1 kWh/h: its second register gets a row
        add_readings(
            conn,
            "E1",
            "2.8.0",
            series(utc("2026-10-31T00:00"), utc("2026-12-01T12:00"), timedelta(hours=1), 10, 0.1),
        )
    # the detection feature judges readings as they arrive: E3's fall is a register_rollback
    await run_detection(database_url, "E1", "E2", "E3", "W1")
    return database_url


async def _export(url: str, file_format: str = "csv", **kw: object) -> bytes:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return b"".join([c async for c in export_bytes(conn, NOV, file_format=file_format, **kw)])  # type: ignore[arg-type]


def _rows(data: bytes) -> dict[tuple[str, str], dict[str, str]]:
    assert data.split(b"\r\n", 1)[0].decode().split(",") == EXPORT_SCHEMA.names
    return {(r["meter_id"], r["register"]): r for r in csv_rows(data)}


async def test_export_boundary_reads_and_consumption(fleet: str) -> None:
    rows = _rows(await _export(fleet))
    assert sorted(rows) == [
        ("E1", "1.8.0"),
        ("E1", "2.8.0"),
        ("E2", "1.8.0"),
        ("E3", "1.8.0"),
        ("W1", "24.2.1"),
    ]
    e1 = rows["E1", "1.8.0"]
    # 2026-10-31T22:00Z is 46 h after the first reading: 1000 + 23
    assert (e1["opening_read"], e1["opening_method"]) == ("1023.000", "actual")
    assert (e1["closing_read"], e1["closing_method"]) == ("1383.000", "actual")
    assert e1["consumption"] == "360.000"
    assert e1["opening_at"] == "2026-10-31T22:00:00Z"
    assert e1["closing_at"] == "2026-11-30T22:00:00Z"
    assert (e1["period"], e1["unit"], e1["utility"], e1["flags"]) == (
        "2026-11",
        "kWh",
        "electricity",
        "",
    )
    e2 = rows["E2", "1.8.0"]
    assert (e2["opening_read"], e2["opening_method"]) == ("501.000", "interpolated")
    assert (e2["closing_read"], e2["closing_method"]) == ("804.000", "interpolated")
    assert e2["consumption"] == "303.000"
    w1 = rows["W1", "24.2.1"]
    assert (w1["opening_read"], w1["closing_read"]) == ("99900.000", "3.333")
    assert w1["closing_method"] == "interpolated"
    assert w1["consumption"] == "103.333"
    assert w1["flags"] == "register_rollover"
    assert w1["unit"] == "m3"
    e3 = rows["E3", "1.8.0"]
    assert e3["consumption"] == "100.000"
    assert e3["flags"] == "register_rollback"
    assert rows["E1", "2.8.0"]["consumption"] == "72.000"


async def test_export_totals_equal_the_sum_of_the_readings(fleet: str) -> None:
    rows = _rows(await _export(fleet))
    exported = sum(
        Decimal(r["consumption"])
        for r in rows.values()
        if r["opening_method"] == r["closing_method"] == "actual" and not r["flags"]
    )
    # independently: the sum of every interval's advance between the boundaries
    with psycopg.connect(fleet) as conn:
        row = conn.execute(
            "SELECT sum(d) FROM (SELECT value - lag(value) OVER w AS d FROM reading_data r"
            " WHERE ts >= %s AND ts <= %s AND meter_id IN ('E1') WINDOW w AS"
            " (PARTITION BY meter_id, channel ORDER BY ts)) s",
            (NOV_OPEN, NOV_CLOSE),
        ).fetchone()
    assert row is not None
    assert exported == Decimal(repr(row[0])).quantize(Decimal("0.001"))
    assert exported == Decimal("432.000")  # 360 imported + 72 exported


async def test_utility_filter_and_parquet(fleet: str) -> None:
    data = await _export(fleet, "parquet", utility="water")
    table = pq.read_table(io.BytesIO(data))
    assert table.schema.equals(EXPORT_SCHEMA)
    assert table.column("meter_id").to_pylist() == ["W1"]
    assert table.column("consumption").to_pylist() == [Decimal("103.333")]
    big = pq.ParquetFile(io.BytesIO(await _export(fleet, "parquet")))
    assert big.metadata.num_rows == 5


async def test_parquet_is_streamed_in_row_groups(fleet: str) -> None:
    from gateway.billing.export import export_rows  # noqa: PLC0415
    from gateway.billing.formats import encoder  # noqa: PLC0415

    enc = encoder(EXPORT_SCHEMA, "parquet")
    parts = []
    async with await psycopg.AsyncConnection.connect(fleet) as conn:
        async for batch in export_rows(conn, NOV, batch_rows=2):
            parts.append(enc.encode(batch))
    parts.append(enc.finish())
    assert all(parts[:-1])  # bytes left after every batch, not only at the end
    meta = pq.ParquetFile(io.BytesIO(b"".join(parts))).metadata
    assert (meta.num_rows, meta.num_row_groups) == (5, 3)


async def test_detection_alerts_flag_the_row(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        # E8: hourly; the import register stands still from 00:00 to 10:00 on 10 November
        # while the meter's own power channel shows 1 kW: detection raises stuck_register, and
        # its evidence names no channel (the rule judges the main register only).
        # E8 also exports energy on 2.8.0.
        add_meter(conn, "E8", "electricity")
        start, stuck_at = utc("2026-10-31T00:00"), utc("2026-11-10T00:00")  # 240 h apart
        hours = range(32 * 24)
        frozen = [min(max(h - 240, 0), 10) for h in hours]
        at = [start + timedelta(hours=h) for h in hours]
        add_readings(conn, "E8", "1.8.0", [(at[h], 500 + h - frozen[h]) for h in hours])
        add_readings(conn, "E8", "1.7.0", [(at[h], 1.0) for h in hours])
        add_readings(conn, "E8", "2.8.0", [(at[h], 10 + h / 10) for h in hours])
        # what the detection feature stores behind its `alerts` view:
        # ended before November, so not this period; and a kind billing does not flag
        conn.execute(
            "INSERT INTO alert_data (meter_id, kind, severity, start_ts, end_ts, evidence) VALUES"
            " ('E2', 'register_rollback', 'critical', '2026-10-01', '2026-10-02',"
            '  \'{"channel": "1.8.0", "previous": 420, "value": 410, "drop": 10}\'),'
            " ('W1', 'leak', 'warning', '2026-11-02', NULL, '{}')"
        )
    await run_detection(fleet, "E8")
    with psycopg.connect(fleet) as conn:
        stuck = conn.execute(
            "SELECT start, evidence FROM alerts WHERE meter_id = 'E8' AND kind = 'stuck_register'"
        ).fetchall()
    assert [(ts, "channel" in evidence) for ts, evidence in stuck] == [(stuck_at, False)]
    rows = _rows(await _export(fleet))
    assert rows["E8", "1.8.0"]["flags"] == "stuck_register"
    assert rows["E8", "2.8.0"]["flags"] == ""  # detection judged the main register only
    assert rows["E1", "1.8.0"]["flags"] == ""
    assert rows["E2", "1.8.0"]["flags"] == ""
    assert rows["W1", "24.2.1"]["flags"] == "register_rollover"


async def test_register_capacity_and_meter_exchange(fleet: str) -> None:
    hourly = timedelta(hours=1)
    with psycopg.connect(fleet, autocommit=True) as conn:
        # E10: a 16-bit register (register_max 65 536), hourly, 0.5 kWh/h, readings on both
        # boundaries; it wraps on 21 November: 65 400 -> 65 760 - 65 536 = 224, 360 kWh
        add_meter(conn, "E10", "electricity")
        conn.execute("UPDATE meters SET register_max = 65536 WHERE meter_id = 'E10'")
        add_readings(
            conn,
            "E10",
            "1.8.0",
            [(ts, v % 65_536) for ts, v in series(NOV_OPEN, NOV_CLOSE, hourly, 65_400, 0.5)],
        )
        # E11: a register of 2^32 Wh shown in kWh (register_max 4 294 967), read every 2 h
        # at odd hours, 1 kWh/h: both boundaries are interpolated, the closing one across the
        # wrap: 4 294 966 at 21:00Z, 1 at 23:00Z -> 0 at 22:00Z; opening 4 294 247
        add_meter(conn, "E11", "electricity")
        conn.execute("UPDATE meters SET register_max = 4294967 WHERE meter_id = 'E11'")
        start = utc("2026-10-30T23:00")
        add_readings(
            conn,
            "E11",
            "1.8.0",
            [
                (ts, v % 4_294_967)
                for ts, v in series(start, utc("2026-12-01T01:00"), 2 * hourly, 4_294_966 - 742, 1)
            ],
        )
        # E12 (no register_max: wraps at 100 000): exchanged on 15 November after 93 173.5
        # for a new meter starting at 0, 0.5 kWh/h throughout. The boundary reads, 93 000 and
        # 0.5 * 372 h = 186, would look like a wrap within the wide margin; the series shows a
        # fall from mid-range that is no rollover: the register went back, not round
        add_meter(conn, "E12", "electricity")
        swap = utc("2026-11-15T10:00")
        old = series(NOV_OPEN, swap - hourly, hourly, 93_000, 0.5)
        new = series(swap, NOV_CLOSE, hourly, 0, 0.5)
        add_readings(conn, "E12", "1.8.0", old + new)
    rows = _rows(await _export(fleet))
    e10 = rows["E10", "1.8.0"]
    assert (e10["opening_read"], e10["closing_read"]) == ("65400.000", "224.000")
    assert (e10["consumption"], e10["flags"]) == ("360.000", "register_rollover")
    e11 = rows["E11", "1.8.0"]
    assert (e11["opening_method"], e11["closing_method"]) == ("interpolated", "interpolated")
    assert (e11["opening_read"], e11["closing_read"]) == ("4294247.000", "0.000")
    assert (e11["consumption"], e11["flags"]) == ("720.000", "register_rollover")
    e12 = rows["E12", "1.8.0"]
    assert (e12["opening_read"], e12["closing_read"]) == ("93000.000", "186.000")
    assert (e12["consumption"], e12["flags"]) == ("", "register_rollback")


async def test_rollback_flag_is_what_detection_found(fleet: str) -> None:
    hourly = timedelta(hours=1)
    month = series(NOV_OPEN, NOV_CLOSE, hourly, 0, 0.5)  # (ts, kWh since the opening)
    with psycopg.connect(fleet, autocommit=True) as conn:
        # E13: idle, its register jittering below its 0.001 resolution: 2000.0004 at the
        # opening, 2000.0001 / 2000.0004 in turn, 2000.0001 at the closing
        add_meter(conn, "E13", "electricity")
        jitter = [(ts, (2000.0004, 2000.0001)[i % 2]) for i, (ts, _) in enumerate(month)]
        add_readings(conn, "E13", "1.8.0", [*jitter[:-1], (NOV_CLOSE, 2000.0001)])
        # E14: 0.5 kWh/h, received on time, but on 10 November its clock was set back 45 min
        # for two readings: the one read at 10:30 is stamped 09:45, the one read at 11:00 is
        # stamped 10:15. In time-stamp order the register falls from 09:45 to 10:00; in the
        # order the meter read them it never went down
        add_meter(conn, "E14", "electricity")
        t10 = utc("2026-11-10T10:00")
        late = {t10 - hourly / 4: t10 + hourly / 2, t10 + hourly / 4: t10 + hourly}
        readings = [(ts, 3000 + used, ts) for ts, used in month if ts != t10 + hourly]
        readings += [
            (stamped, 3000 + 0.5 * (read - NOV_OPEN) / hourly, read)
            for stamped, read in late.items()
        ]
        conn.cursor().executemany(
            "INSERT INTO reading_data (meter_id, channel, ts, value, received_at)"
            " VALUES ('E14', '1.8.0', %s, %s, %s)",
            readings,
        )
        # E15: a genuine fall inside the period (the register set back by 50 kWh on
        # 10 November), boundaries exact: 4000 -> 4000 + 360 - 50
        add_meter(conn, "E15", "electricity")
        add_readings(
            conn,
            "E15",
            "1.8.0",
            [(ts, 4000 + used - 50 * (ts > t10)) for ts, used in month],
        )
    rows_before = _rows(await _export(fleet))
    await run_detection(fleet, "E13", "E14", "E15")
    with psycopg.connect(fleet) as conn:
        found = conn.execute(
            "SELECT meter_id, evidence ->> 'channel' FROM alerts"
            " WHERE kind = 'register_rollback' AND meter_id IN ('E13', 'E14', 'E15')"
        ).fetchall()
    assert found == [("E15", "1.8.0")]
    rows = _rows(await _export(fleet))
    e13 = rows["E13", "1.8.0"]
    assert (e13["opening_read"], e13["closing_read"]) == ("2000.000", "2000.000")
    assert (e13["consumption"], e13["flags"]) == ("0.000", "")
    assert (rows["E14", "1.8.0"]["consumption"], rows["E14", "1.8.0"]["flags"]) == ("360.000", "")
    e15 = rows["E15", "1.8.0"]
    assert (e15["consumption"], e15["flags"]) == ("310.000", "register_rollback")
    # the flag is detection's finding: before detection judged E15's readings there was none
    assert rows_before["E15", "1.8.0"]["flags"] == ""


async def test_person_reads_at_boundaries(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        add_meter(conn, "E7", "electricity")
        conn.execute(
            "INSERT INTO billing_reads (meter_id, channel, ts, value, source, status, reason,"
            " origin) VALUES"
            " ('E7', '1.8.0', '2026-11-01T07:00:00Z', 40, 'customer', 'accepted', NULL, 't'),"
            " ('E7', '1.8.0', '2026-11-30T22:00:00Z', 95.5, 'technician', 'accepted', NULL, 't'),"
            " ('E7', '1.8.0', '2026-11-30T21:00:00Z', 999, 'customer', 'rejected', 'x', 't')"
        )
    rows = _rows(await _export(fleet))
    e7 = rows["E7", "1.8.0"]
    assert (e7["opening_method"], e7["opening_read"]) == ("customer", "40.000")
    assert (e7["closing_method"], e7["closing_read"]) == ("manual", "95.500")
    assert e7["consumption"] == "55.500"


async def test_a_second_register_with_data_only_inside_the_period_gets_its_row(
    database_url: str,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        add_meter(conn, "E20", "electricity")
        add_readings(conn, "E20", "1.8.0", [(NOV_OPEN, 10.0), (NOV_CLOSE, 70.0)])
        # export began on 10 November: nothing near either boundary
        add_readings(
            conn,
            "E20",
            "2.8.0",
            series(utc("2026-11-10T00:00"), utc("2026-11-20T00:00"), timedelta(days=1), 0, 0.5),
        )
        add_meter(conn, "E21", "electricity")  # no export at all: no second row
        add_readings(conn, "E21", "1.8.0", [(NOV_OPEN, 5.0), (NOV_CLOSE, 6.0)])
    rows = _rows(await _export(database_url, now=LATER))
    assert sorted(rows) == [("E20", "1.8.0"), ("E20", "2.8.0"), ("E21", "1.8.0")]
    second = rows["E20", "2.8.0"]
    # nothing to estimate the opening from (no history before 10 November): not billable,
    # and shown so rather than left out
    assert (second["opening_method"], second["consumption"]) == ("unavailable", "")
    # the closing is estimated from 10-20 November: 12 kWh/day, 10 d 22 h after 120 -> 251
    assert (second["closing_method"], second["closing_read"]) == ("estimated", "251.000")
