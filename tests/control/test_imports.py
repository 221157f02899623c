"""Bulk account, arrears and payment files against the real database."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from gateway.control.imports import ImportResult, import_rows

ROOT = Path(__file__).resolve().parents[2]
ZA = ZoneInfo("Africa/Johannesburg")

ACCOUNTS = """account_id,customer_class,contact_numbers,indigent_from,indigent_to,essential,meters
A1,domestic,+27821234567;0123456789,,,false,E1;W1
A2,domestic,+27829999999,2026-01-01,2026-12-31,false,W2
BAD ID,domestic,,,,false,
A3,hospital,,,,yes,
A4,domestic,,2026-05-01,2026-04-01,false,
A5,domestic,,,,false,NOPE
"""

ARREARS = """account_id,arrears,arrears_since,as_of
A1,1200.00,2026-08-15,2026-11-30
A2,650.50,2026-09-01,2026-11-30
A3,12.345,2026-09-01,2026-11-30
A9,100.00,2026-09-01,2026-11-30
A3,900.00,,2026-11-30
"""

PAYMENTS = """reference,account_id,amount,paid_at
P-1,A1,200.00,2026-11-30T09:15:00+02:00
P-2,A2,1000.00,2026-11-30
P-3,A1,0.00,2026-11-30
P-4,A1,50.00,yesterday
"""


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for meter_id, utility, payment in (
            ("E1", "electricity", "postpaid"),
            ("W1", "water", "postpaid"),
            ("W2", "water", "postpaid"),
        ):
            conn.execute(
                "INSERT INTO meters (meter_id, utility, payment, verified)"
                " VALUES (%s, %s, %s, true)",
                (meter_id, utility, payment),
            )
    return database_url


async def load(url: str, kind: str, text: str) -> list[ImportResult]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return [
            r
            async for r in import_rows(
                conn, kind, io.StringIO(text), actor="test", source="file:t.csv", zone=ZA
            )
        ]


def snapshot(url: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        accounts = conn.execute(
            "SELECT account_id, arrears, arrears_since, contact_numbers, essential,"
            " indigent_from, indigent_to, updated_at FROM accounts ORDER BY account_id"
        ).fetchall()
        payments = conn.execute(
            "SELECT reference, amount, applied FROM account_payments ORDER BY reference"
        ).fetchall()
        owners = conn.execute(
            "SELECT meter_id, account_id FROM meter_vending ORDER BY meter_id"
        ).fetchall()
    return accounts, payments, owners


async def test_files_load_with_bad_rows_reported_and_reimport_changes_nothing(db: str) -> None:
    results = await load(db, "accounts", ACCOUNTS)
    errors = {r.line: r.reason for r in results if r.outcome == "error"}
    assert set(errors) == {4, 6, 7}
    assert "account_id" in errors[4]
    assert "indigent_to" in errors[6]
    assert "unknown meter" in errors[7]
    assert [r.outcome for r in results if r.line in (2, 3, 5)] == ["stored"] * 3

    results = await load(db, "arrears", ARREARS)
    errors = {r.line: r.reason for r in results if r.outcome == "error"}
    assert set(errors) == {4, 5, 6}
    assert "arrears" in errors[4]
    assert "not known" in errors[5]
    assert "arrears_since" in errors[6]

    results = await load(db, "payments", PAYMENTS)
    errors = {r.line: r.reason for r in results if r.outcome == "error"}
    assert set(errors) == {4, 5}

    with psycopg.connect(db) as conn:
        rows = dict(conn.execute("SELECT account_id, arrears FROM accounts").fetchall())
        owners = dict(conn.execute("SELECT meter_id, account_id FROM meter_vending").fetchall())
        a3 = conn.execute("SELECT essential FROM accounts WHERE account_id = 'A3'").fetchone()
        audit = conn.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'control.payment'"
        ).fetchone()
    assert rows["A1"] == Decimal("1000.00")  # 1200 - 200
    assert rows["A2"] == Decimal("0.00")  # 650.50 paid with 1000: never below zero
    assert owners == {"E1": "A1", "W1": "A1", "W2": "A2"}
    assert a3 == (True,)
    assert audit == (2,)

    before = snapshot(db)
    for kind, text in (("accounts", ACCOUNTS), ("arrears", ARREARS), ("payments", PAYMENTS)):
        again = await load(db, kind, text)
        assert {r.outcome for r in again} <= {"unchanged", "error"}
    assert snapshot(db) == before


async def test_older_arrears_balance_is_stale(db: str) -> None:
    await load(db, "accounts", "account_id\nA1\n")
    await load(
        db, "arrears", "account_id,arrears,arrears_since,as_of\nA1,800,2026-08-01,2026-11-30\n"
    )
    old = await load(
        db, "arrears", "account_id,arrears,arrears_since,as_of\nA1,300,2026-08-01,2026-10-31\n"
    )
    assert [r.outcome for r in old] == ["stale"]
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT arrears FROM accounts").fetchone() == (Decimal("800.00"),)


async def test_a_payment_reference_with_other_details_is_refused(db: str) -> None:
    await load(db, "accounts", "account_id\nA1\n")
    await load(db, "payments", "reference,account_id,amount,paid_at\nP1,A1,10,2026-11-30\n")
    results = await load(
        db, "payments", "reference,account_id,amount,paid_at\nP1,A1,20,2026-11-30\n"
    )
    assert results[0].outcome == "error"
    assert "other details" in results[0].reason


async def test_header_must_name_the_documented_columns(db: str) -> None:
    from gateway.errors import ValidationError  # noqa: PLC0415

    with pytest.raises(ValidationError, match="missing columns: as_of"):
        await load(db, "arrears", "account_id,arrears\nA1,1\n")


def test_cli_import_reports_lines_and_exit_code(db: str, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.csv"
    accounts.write_text(ACCOUNTS, encoding="utf-8")
    env = {**os.environ, "GATEWAY_DATABASE_URL": db}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "import", "accounts", str(accounts)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "line 4: error account_id" in done.stdout
    assert "accounts.csv: stored 3, unchanged 0, stale 0, errors 3" in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "gateway", "import", "accounts", str(accounts)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert "stored 0, unchanged 3" in again.stdout
