"""Credit-control runs and notices against the real database: plan, fleet-share limit, halt,
approval with exclusions re-checked at execution time, the notifier and its channels."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from gateway.control.accounts import record_payment
from gateway.control.execution import approve_run, set_halt
from gateway.control.notifier import DeliveryError, LogChannel, WebhookChannel, drain_once
from gateway.control.records import PaymentRecord
from gateway.control.runs import plan_run, review_list
from gateway.errors import ConflictError

ZA = ZoneInfo("Africa/Johannesburg")
TODAY = date(2026, 11, 30)
NOW = datetime(2026, 11, 30, 8, tzinfo=UTC)

# account: (meters [(id, utility, payment)], arrears, essential, indigent, served notices)
FLEET: dict[str, tuple[list[tuple[str, str, str]], str, bool, bool, bool]] = {
    "POST": ([("E-POST", "electricity", "postpaid")], "1200", False, False, True),
    "PRE": ([("E-PRE", "electricity", "prepaid")], "1000", False, False, True),
    "WATER": ([("W-IND", "water", "postpaid")], "800", False, True, True),
    "ESS": ([("E-ESS", "electricity", "postpaid")], "5000", True, False, True),
    "NEW": ([("E-NEW", "electricity", "postpaid")], "700", False, False, False),
    "SMALL": ([("E-SMALL", "electricity", "postpaid")], "100", False, False, True),
}


@pytest.fixture
def db(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for account_id, (meters, arrears, essential, indigent, served) in FLEET.items():
            conn.execute(
                "INSERT INTO accounts (account_id, arrears, arrears_since, essential,"
                " indigent_from, contact_numbers, debt_recovery_share)"
                " VALUES (%s, %s, '2026-08-01', %s, %s, '{+27820000000}', 10)",
                (account_id, Decimal(arrears), essential, date(2026, 1, 1) if indigent else None),
            )
            for meter_id, utility, payment in meters:
                conn.execute(
                    "INSERT INTO meters (meter_id, utility, payment, verified)"
                    " VALUES (%s, %s, %s, true)",
                    (meter_id, utility, payment),
                )
                conn.execute(
                    "INSERT INTO meter_vending (meter_id, account_id) VALUES (%s, %s)",
                    (meter_id, account_id),
                )
            if served:
                conn.execute(
                    "INSERT INTO control_accounts (account_id, notice_served_on,"
                    " final_notice_served_on) VALUES (%s, '2026-10-01', '2026-11-01')",
                    (account_id,),
                )
    return database_url


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


def payment(reference: str, amount: str) -> PaymentRecord:
    return PaymentRecord(reference, "PRE", Decimal(amount), NOW)


def steps(run: dict[str, Any]) -> dict[tuple[str, str | None], str]:
    return {(i["account_id"], i["meter_id"]): i["step"] for i in run["items"]}


async def test_plan_refuses_more_than_the_fleet_share_unless_raised(db: str) -> None:
    async with await connect(db) as conn:
        with pytest.raises(ConflictError, match="above the limit of 5"):
            await plan_run(conn, actor="op", as_of=TODAY, now=NOW)
        run = await plan_run(conn, actor="op", as_of=TODAY, now=NOW, fleet_share_limit=Decimal(100))
    assert steps(run) == {
        ("POST", "E-POST"): "disconnect",
        ("PRE", "E-PRE"): "block_vending",
        ("WATER", "W-IND"): "restrict",
        ("ESS", "E-ESS"): "review",
        ("NEW", None): "notice",
    }
    post = next(i for i in run["items"] if i["account_id"] == "POST")
    assert {c["name"] for c in post["checks"] if c["passed"]} >= {
        "dispute_excluded",
        "final_notice_period",
        "essential",
    }
    assert any("window" in r for r in post["reasons"])


async def test_approval_rechecks_exclusions_and_executes(db: str) -> None:
    async with await connect(db) as conn:
        run = await plan_run(conn, actor="op", as_of=TODAY, now=NOW, fleet_share_limit=Decimal(100))
        # between planning and approval: PRE disputes most of its arrears
        await conn.execute(
            "UPDATE accounts SET dispute_amount = 900, dispute_state = 'open'"
            " WHERE account_id = 'PRE'"
        )
        await set_halt(conn, halted=True, actor="op", reason="storm")
        with pytest.raises(ConflictError, match="halted"):
            await approve_run(conn, run["run_id"], actor="op2", today=TODAY)
        await set_halt(conn, halted=False, actor="op", reason="")
        done = await approve_run(conn, run["run_id"], actor="op2", today=TODAY)
        with pytest.raises(ConflictError, match="approved"):
            await approve_run(conn, run["run_id"], actor="op2", today=TODAY)
        outcome = {i["account_id"]: (i["state"], i["outcome"]) for i in done["items"]}
        assert outcome["PRE"][0] == "skipped"
        assert "at execution" in outcome["PRE"][1]
        assert outcome["ESS"] == ("done", "on the review list")
        assert outcome["NEW"] == ("done", "notice queued")
        # Orders become commands that wait for the execution window (NOW is outside it).
        assert outcome["POST"][0] == "ordered" and "(disconnect)" in outcome["POST"][1]
        assert outcome["WATER"][0] == "ordered" and "(restrict)" in outcome["WATER"][1]
        commands = await (
            await conn.execute(
                "SELECT meter_id, action, state, windowed, origin, run_id IS NOT NULL"
                " FROM meter_commands ORDER BY meter_id"
            )
        ).fetchall()
        assert commands == [
            ("E-POST", "disconnect", "planned", True, "credit_control", True),
            ("W-IND", "restrict", "planned", True, "credit_control", True),
        ]
        share = await (
            await conn.execute("SELECT debt_recovery_share FROM accounts WHERE account_id='PRE'")
        ).fetchone()
        assert share == (Decimal("10.00"),)  # not blocked: the dispute now protects it
        audit = await (
            await conn.execute(
                "SELECT action, outcome FROM audit_log WHERE action LIKE 'control.%%' ORDER BY id"
            )
        ).fetchall()
    actions = [a for a, _ in audit]
    assert actions[0] == "control.run.plan"
    assert ("control.halt", "halted") in audit
    assert "control.run.approve" in actions
    assert ("control.order.review", "done") in audit
    async with await connect(db) as conn:
        review = await review_list(conn)
    assert [(r["meter_id"], r["account_id"]) for r in review] == [("E-ESS", "ESS")]


async def test_prepaid_block_and_release_on_payment(db: str) -> None:
    async with await connect(db) as conn:
        run = await plan_run(
            conn,
            actor="op",
            as_of=TODAY,
            now=NOW,
            account_ids=["PRE"],
            fleet_share_limit=Decimal(100),
        )
        await approve_run(conn, run["run_id"], actor="op", today=TODAY)
        row = await (
            await conn.execute(
                "SELECT a.debt_recovery_share, c.debt_at_action, m.state FROM accounts a"
                " JOIN control_accounts c USING (account_id)"
                " JOIN control_meters m USING (account_id) WHERE account_id = 'PRE'"
            )
        ).fetchone()
        assert row == (Decimal("60.00"), Decimal("1000.00"), "blocked")
        # 29.99% of R 1 000 paid: still blocked; 30%: released at once by the payment
        await record_payment(conn, payment("P1", "299.99"), actor="billing", source="test")
        still = await (
            await conn.execute("SELECT state FROM control_meters WHERE meter_id = 'E-PRE'")
        ).fetchone()
        assert still == ("blocked",)
        await record_payment(conn, payment("P2", "0.01"), actor="billing", source="test")
        row = await (
            await conn.execute(
                "SELECT a.debt_recovery_share, m.state FROM accounts a"
                " JOIN control_meters m USING (account_id) WHERE account_id = 'PRE'"
            )
        ).fetchone()
        assert row == (Decimal("10.00"), "normal")


async def test_notices_are_delivered_once_and_start_the_final_notice_period(db: str) -> None:
    async with await connect(db) as conn:
        run = await plan_run(conn, actor="op", as_of=TODAY, now=NOW, account_ids=["NEW"])
        await approve_run(conn, run["run_id"], actor="op", today=TODAY)
        # a pending (undelivered) notice is not planned again
        again = await plan_run(conn, actor="op", as_of=TODAY, now=NOW, account_ids=["NEW"])
        assert again["items"] == []
        received: list[tuple[str, dict[str, Any]]] = []
        failures = iter([503, 200])

        def handler(request: httpx.Request) -> httpx.Response:
            status = next(failures, 200)
            if status == 200:
                received.append((request.headers["Idempotency-Key"], json.loads(request.content)))
            return httpx.Response(status)

        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        channel = WebhookChannel("http://sms.invalid/send", client=client)
        assert await drain_once(conn, channel, zone=ZA) == 1
        assert await drain_once(conn, channel, zone=ZA) == 0
        await channel.aclose()
        assert len(received) == 1
        key, payload = received[0]
        assert key.startswith("outbox-")
        assert payload["kind"] == "notice"
        assert payload["to"] == ["+27820000000"]
        assert "R 700.00" in payload["text"] and "pay" in payload["text"].lower()
        served = await (
            await conn.execute(
                "SELECT notice_served_on FROM control_accounts WHERE account_id = 'NEW'"
            )
        ).fetchone()
        assert served is not None and served[0] is not None


async def test_webhook_refusal_keeps_the_row_for_later(db: str) -> None:
    async with await connect(db) as conn:
        run = await plan_run(conn, actor="op", as_of=TODAY, now=NOW, account_ids=["NEW"])
        await approve_run(conn, run["run_id"], actor="op", today=TODAY)
        client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(400)))
        channel = WebhookChannel("http://sms.invalid/send", client=client)
        with pytest.raises(DeliveryError):
            await channel.send("k", {"kind": "notice"})
        # a row that fails does not hold up the rows behind it
        await conn.execute(
            "INSERT INTO alert_outbox (notice_id, event, payload)"
            " SELECT notice_id, 'notice', payload FROM alert_outbox"
        )
        assert await drain_once(conn, channel, zone=ZA) == 0
        await channel.aclose()
        rows = await (
            await conn.execute(
                "SELECT sent_at, attempts FROM alert_outbox WHERE notice_id IS NOT NULL ORDER BY id"
            )
        ).fetchall()
        assert rows == [(None, 1), (None, 1)]
        assert await drain_once(conn, LogChannel(), zone=ZA) == 2


def test_cli_plan_prints_the_stored_run(db: str) -> None:
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "control",
            "plan",
            "--as-of",
            "2026-11-30",
            "--account",
            "NEW",
            "--account",
            "SMALL",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "GATEWAY_DATABASE_URL": db},
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["state"] == "planned"
    assert [(i["account_id"], i["step"]) for i in run["items"]] == [("NEW", "notice")]
    refused = subprocess.run(
        [sys.executable, "-m", "gateway", "control", "plan", "--as-of", "2026-11-30"],
        capture_output=True,
        text=True,
        env={**os.environ, "GATEWAY_DATABASE_URL": db},
        check=False,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "above the limit" in refused.stderr
