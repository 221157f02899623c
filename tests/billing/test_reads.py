"""Person's reads and meter readers' bulk files, against the real database."""

from __future__ import annotations

import io
from pathlib import Path

import psycopg
import pytest

from gateway.billing import readfile
from gateway.billing.core import BillingPolicy, ReadSource
from gateway.billing.errors import ReadConflictError, ReadFileError
from gateway.billing.readfile import import_reads, parse_reads
from gateway.billing.reads import ReadSubmission, decide_review, review_list, submit_read
from gateway.errors import NotFoundError
from tests.billing.helpers import add_meter, add_readings, csv_rows, run_cli, utc


@pytest.fixture
def meters(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        add_meter(conn, "E1", "electricity")
        add_readings(conn, "E1", "1.8.0", [(utc("2026-11-01T00:00"), 1000.0)])
        add_meter(conn, "W1", "water")
        add_readings(conn, "W1", "24.2.1", [(utc("2026-11-01T00:00"), 99_998.0)])
        add_meter(conn, "W2", "water")
        conn.execute("INSERT INTO billing_meter_sizes VALUES ('W2', '25mm')")
        add_readings(conn, "W2", "24.2.1", [(utc("2026-11-01T00:00"), 100.0)])
    return database_url


def read(meter_id: str, when: str, value: float, **kw: object) -> ReadSubmission:
    return ReadSubmission(
        meter_id=meter_id,
        ts=utc(when),
        value=value,
        source=kw.pop("source", ReadSource.METER_READER),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


async def test_reads_are_validated_against_history(meters: str) -> None:
    async with await psycopg.AsyncConnection.connect(meters) as conn:
        ok = await submit_read(conn, read("E1", "2026-11-03T09:00", 1100.0), actor="t")
        assert (ok.created, ok.read.status, ok.read.channel) == (True, "accepted", "1.8.0")
        low = await submit_read(conn, read("E1", "2026-11-04T09:00", 1099.0), actor="t")
        assert (low.read.status, low.read.reason) == ("rejected", "below_previous_read")
        # 250 kWh/day for 1 day after the accepted 1100 allows 250: 1400 is implausible
        high = await submit_read(conn, read("E1", "2026-11-04T10:00", 1400.0), actor="t")
        assert (high.read.status, high.read.reason) == ("rejected", "implausible_consumption")
        # a rollover near the top of a water register is consumption, not a fall
        wrap = await submit_read(conn, read("W1", "2026-11-02T00:00", 2.0), actor="t")
        assert wrap.read.status == "accepted"
        # W2 is a 25 mm meter: 20 m3/day allowed, so 15 in one day is plausible (5 for 15 mm)
        big = await submit_read(conn, read("W2", "2026-11-02T00:00", 115.0), actor="t")
        assert big.read.status == "accepted"
        wrong = await submit_read(
            conn, read("W2", "2026-11-03T00:00", 120.0, channel="1.8.0"), actor="t"
        )
        assert (wrong.read.status, wrong.read.reason) == ("rejected", "unknown_register")
        # the same read again is the stored one; the same key with another value conflicts
        again = await submit_read(conn, read("E1", "2026-11-03T09:00", 1100.0), actor="t")
        assert (again.created, again.read.id) == (False, ok.read.id)
        with pytest.raises(ReadConflictError):
            await submit_read(conn, read("E1", "2026-11-03T09:00", 1101.0), actor="t")
        with pytest.raises(NotFoundError):
            await submit_read(conn, read("NOPE", "2026-11-03T09:00", 1.0), actor="t")

        review = await review_list(conn)
        assert [(r.meter_id, r.reason) for r in review] == [
            ("E1", "below_previous_read"),
            ("E1", "implausible_consumption"),
            ("W2", "unknown_register"),
        ]
        decided = await decide_review(conn, high.read.id, accept=True, actor="operator-1")
        assert (decided.status, decided.reviewed_by) == ("accepted", "operator-1")
        assert [r.id for r in await review_list(conn)] == [low.read.id, wrong.read.id]
        with pytest.raises(NotFoundError):
            await decide_review(conn, high.read.id, accept=False, actor="operator-1")


async def test_reads_roll_over_at_the_registered_capacity(meters: str) -> None:
    with psycopg.connect(meters, autocommit=True) as conn:
        add_meter(conn, "E16", "electricity")  # a 16-bit register: register_max 65 536
        conn.execute("UPDATE meters SET register_max = 65536 WHERE meter_id = 'E16'")
        add_readings(conn, "E16", "1.8.0", [(utc("2026-11-01T00:00"), 65_530.0)])
    async with await psycopg.AsyncConnection.connect(meters) as conn:
        # 6 to the wrap and 10 after it: consumption, not a fall below the previous read
        wrap = await submit_read(conn, read("E16", "2026-11-02T00:00", 10.0), actor="t")
        assert (wrap.read.status, wrap.read.reason) == ("accepted", None)
        back = await submit_read(conn, read("E16", "2026-11-03T00:00", 8.0), actor="t")
        assert (back.read.status, back.read.reason) == ("rejected", "below_previous_read")


FILE = """meter_id,register,read_at,value,source,reader,photo_ref
E1,1.8.0,2026-11-05T08:30:00+02:00,1120.5,meter_reader,R. Mokoena,photos/e1.jpg
E1,,2026-11-06T08:30:00,not-a-number,meter_reader,R. Mokoena,
X9,,2026-11-06T08:30:00Z,5,meter_reader,R. Mokoena,
W1,24.2.1,yesterday,7,meter_reader,R. Mokoena,
W1,24.2.1,2026-11-06T08:30:00+02:00,7,postman,R. Mokoena,
W1,24.2.1,2026-11-06T08:30:00,4.5,customer,,
E1,1.8.0,2026-11-07T08:30:00+02:00,900,meter_reader,R. Mokoena,
"""


async def _import(url: str, text: str) -> list[tuple[int, str, str | None]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return [
            (r.line, r.outcome, r.reason)
            async for r in import_reads(
                conn,
                io.StringIO(text, newline=""),
                origin="file:test.csv",
                actor="t",
                policy=BillingPolicy(),
            )
        ]


async def test_bulk_file_with_bad_lines_and_imported_twice(meters: str) -> None:
    first = await _import(meters, FILE)
    assert first == [
        (2, "accepted", None),
        (3, "error", "bad_value"),
        (4, "error", "unknown_meter"),
        (5, "error", "bad_time"),
        (6, "error", "bad_source"),
        (7, "accepted", None),
        (8, "rejected", "below_previous_read"),
    ]
    with psycopg.connect(meters) as conn:
        stored = conn.execute(
            "SELECT meter_id, ts, value, source, reader, photo_ref, status, origin"
            " FROM billing_reads ORDER BY id"
        ).fetchall()
    assert [(r[0], r[2], r[3], r[6]) for r in stored] == [
        ("E1", 1120.5, "meter_reader", "accepted"),
        ("W1", 4.5, "customer", "accepted"),
        ("E1", 900.0, "meter_reader", "rejected"),
    ]
    assert stored[0][1] == utc("2026-11-05T06:30")
    assert stored[0][4:6] == ("R. Mokoena", "photos/e1.jpg")
    assert stored[1][1] == utc("2026-11-06T06:30")  # naive time: the meter's zone (UTC+2)
    assert stored[0][7] == "file:test.csv:2"

    second = await _import(meters, FILE)
    assert [o for _, o, _ in second] == [
        "unchanged",
        "error",
        "error",
        "error",
        "error",
        "unchanged",
        "unchanged",
    ]
    with psycopg.connect(meters) as conn:
        again = conn.execute(
            "SELECT meter_id, ts, value, source, reader, photo_ref, status, origin"
            " FROM billing_reads ORDER BY id"
        ).fetchall()
    assert again == stored


UNSTORABLE = (
    "meter_id,read_at,value,source,reader\n"
    "E1,2026-11-05T08:30:00+02:00,1110,meter_reader,R.\x00Mokoena\n"
    "E1,0001-01-01T00:30+01:00,1111,meter_reader,\n"  # BC once in UTC
    "E1,2026-11-06T08:30:00+02:00,1120,meter_reader,\n"
)


async def _stored_values(url: str) -> list[float]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT value FROM billing_reads ORDER BY id")
        return [value for (value,) in await cur.fetchall()]


async def test_unstorable_text_and_times_out_of_range_are_line_errors(meters: str) -> None:
    text = UNSTORABLE + (
        "E1,1999-12-31T23:59:59,1121,meter_reader,\n"
        "E1,3000-01-01T00:00:00Z,1122,meter_reader,\n"
        "E1,2026-11-07T08:30:00+02:00,1130,meter_reader,\n"
    )
    assert await _import(meters, text) == [
        (2, "error", "bad_text"),
        (3, "error", "bad_time"),
        (4, "accepted", None),
        (5, "error", "bad_time"),
        (6, "error", "bad_time"),
        (7, "accepted", None),
    ]
    assert await _stored_values(meters) == [1120.0, 1130.0]


async def test_a_line_the_database_refuses_is_that_lines_error(
    meters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the parser's checks, the database's own refusal is caught per line too.
    monkeypatch.setattr(readfile, "text_problem", lambda value: None)
    monkeypatch.setattr(readfile, "read_time_problem", lambda ts: None)
    assert await _import(meters, UNSTORABLE) == [
        (2, "error", "bad_data"),
        (3, "error", "bad_data"),
        (4, "accepted", None),
    ]
    assert await _stored_values(meters) == [1120.0]


def test_file_without_required_columns_is_refused() -> None:
    with pytest.raises(ReadFileError, match="read_at"):
        list(parse_reads(io.StringIO("meter_id,value,source\nE1,1,customer\n"), origin="f"))


def test_cli_import_and_export(meters: str, tmp_path: Path) -> None:
    path = tmp_path / "round-7.csv"
    path.write_text(FILE, encoding="utf-8")
    done = run_cli(meters, "import", "reads", str(path))
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("line 3: error bad_value:")
    assert lines[-1] == "round-7.csv: accepted 2, rejected 1, unchanged 0, errors 4"
    done = run_cli(meters, "import", "reads", str(path))
    assert done.stdout.splitlines()[-1] == (
        "round-7.csv: accepted 0, rejected 0, unchanged 3, errors 4"
    )

    out = tmp_path / "nov.csv"
    done = run_cli(
        meters, "export", "billing", "--period", "2026-11", "--utility", "water", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    rows = csv_rows(out.read_bytes())
    assert [(r["meter_id"], r["register"]) for r in rows] == [("W1", "24.2.1"), ("W2", "24.2.1")]
    assert not list(tmp_path.glob(".*partial"))

    bad = run_cli(meters, "export", "billing", "--period", "2026-13")
    assert bad.returncode == 2 and "not YYYY-MM" in bad.stderr
    missing = run_cli(meters, "import", "reads", str(tmp_path / "absent.csv"))
    assert missing.returncode == 1 and "cannot open" in missing.stderr


def test_cli_reads_a_file_with_a_byte_order_mark(meters: str, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"  # Excel's "CSV UTF-8" starts with a BOM
    path.write_bytes(
        b"\xef\xbb\xbfmeter_id,read_at,value,source\r\n"
        b"E1,2026-11-05T08:30:00+02:00,1110,meter_reader\r\n"
    )
    done = run_cli(meters, "import", "reads", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["excel.csv: accepted 1, rejected 0, unchanged 0, errors 0"]


def test_cli_reports_a_line_that_is_not_utf8_and_loads_the_rest(
    meters: str, tmp_path: Path
) -> None:
    path = tmp_path / "latin-1.csv"
    path.write_bytes(
        b"meter_id,read_at,value,source,reader\n"
        b"E1,2026-11-05T08:30:00+02:00,1110,meter_reader,R. Mokoena\n"
        b"E1,2026-11-06T08:30:00+02:00,1120,meter_reader,Ren\xe9 Botha\n"
        b"E1,2026-11-07T08:30:00+02:00,1130,meter_reader,R. Mokoena\n"
    )
    done = run_cli(meters, "import", "reads", str(path))
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [
        "line 3: error not_utf8: not UTF-8 text",
        "latin-1.csv: accepted 2, rejected 0, unchanged 0, errors 1",
    ]
    again = run_cli(meters, "import", "reads", str(path))
    assert again.stdout.splitlines()[-1] == (
        "latin-1.csv: accepted 0, rejected 0, unchanged 2, errors 1"
    )


def test_bytes_that_are_not_utf8_make_their_line_an_error() -> None:
    # open_read_file decodes with surrogateescape: a byte that is not UTF-8 arrives as U+DCxx,
    # here in a value past the header's columns
    text = "meter_id,read_at,value,source,note\nE1,2026-11-05T08:30:00Z,1,customer,x,\udce9\n"
    assert [(n, r) for n, r in parse_reads(io.StringIO(text), origin="f")] == [
        (2, readfile.LineError(2, "not_utf8", "not UTF-8 text"))
    ]
    with pytest.raises(ReadFileError, match="header"):
        list(parse_reads(io.StringIO("meter_id,read_at,value,source,n\udce9\n"), origin="f"))


def test_an_open_quote_or_an_oversized_field_is_its_own_lines_error() -> None:
    text = (
        "meter_id,read_at,value,source,reader\n"
        "E1,2026-11-05T08:30:00Z,1,customer,A\n"  # 2
        f"E1,2026-11-06T08:30:00Z,2,customer,{'x' * 200_000}\n"  # 3: over the csv field limit
        "E1,2026-11-07T08:30:00Z,3,customer,B\n"  # 4
        'E1,2026-11-08T08:30:00Z,4,customer,"R. Mokoena\n'  # 5: the quote is never closed
        "E1,2026-11-09T08:30:00Z,5,customer,C\n"  # 6
        "\n"  # 7: blank
        "E1,2026-11-10T08:30:00Z,6,customer,D\n"  # 8
    )
    parsed = list(parse_reads(io.StringIO(text, newline=""), origin="f"))
    # every other line loads: a line is a record, whatever the one before it did
    assert [n for n, r in parsed if isinstance(r, ReadSubmission)] == [2, 4, 6, 8]
    errors = [(n, r.reason) for n, r in parsed if isinstance(r, readfile.LineError)]
    assert errors == [(3, "bad_csv"), (5, "bad_csv")]
    assert "field larger than field limit" in parsed[1][1].detail  # type: ignore[union-attr]
    assert "unexpected end of data" in parsed[3][1].detail  # type: ignore[union-attr]


def test_line_numbers_count_blank_lines_and_survive_a_bad_line() -> None:
    text = (
        "\n"  # 1: blank before the header
        "meter_id,read_at,value,source\n"  # 2
        "\n"  # 3
        f"E1,2026-11-06T08:30:00Z,{'9' * 200_000}\n"  # 4
        '"E1,2026-11-07T08:30:00Z,3,customer\n'  # 5: opens a quote
        "E1,2026-11-08T08:30:00Z,4,customer\n"  # 6
    )
    parsed = list(parse_reads(io.StringIO(text, newline=""), origin="f"))
    assert [(n, type(r).__name__) for n, r in parsed] == [
        (4, "LineError"),
        (5, "LineError"),
        (6, "ReadSubmission"),
    ]


def test_a_blank_line_is_skipped_not_an_error() -> None:
    text = "meter_id,read_at,value,source\n\nE1,2026-11-05T08:30:00Z,1,customer\n"
    [(line, parsed)] = list(parse_reads(io.StringIO(text, newline=""), origin="f"))
    assert line == 3 and isinstance(parsed, ReadSubmission)


async def test_future_dated_file_read_is_held(meters: str) -> None:
    text = "meter_id,read_at,value,source\nE1,2999-01-01T00:00:00Z,1200,meter_reader\n"
    assert await _import(meters, text) == [(2, "rejected", "future_read")]
