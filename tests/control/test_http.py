"""The credit-control API on a running gateway: policy versions, accounts, payments,
disputes and arrangements, with roles and the audit trail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import psycopg

from gateway.http.security import Role
from gateway.service import GatewayHandle
from gateway.settings import Settings

Auth = Callable[[str, Role], Awaitable[dict[str, str]]]


async def test_policy_accounts_payments_over_http(
    gateway_settings: Settings, gateway: GatewayHandle, auth_headers: Auth
) -> None:
    url = gateway_settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meters (meter_id, utility, payment, verified)"
            " VALUES ('E1', 'electricity', 'postpaid', true)"
        )
    operator = await auth_headers(url, Role.OPERATOR)
    tech = await auth_headers(url, Role.TECHNICIAN)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        assert (await http.get("/control/v1/policy")).status_code == 401
        assert (await http.get("/control/v1/policy", headers=tech)).status_code == 403
        policy = (await http.get("/control/v1/policy", headers=operator)).json()
        assert policy["version"] == 0
        assert policy["policy"]["notice_threshold"] == "500.00"
        assert policy["policy"]["final_notice_days"] == 14
        changed = await http.put(
            "/control/v1/policy",
            json={"changes": {"prepaid_recovery_share": "100"}},
            headers=operator,
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["version"] == 1
        refused = await http.put(
            "/control/v1/policy", json={"changes": {"final_notice_days": 7}}, headers=operator
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["fields"][0]["field"] == "final_notice_days"
        now = (await http.get("/control/v1/policy", headers=operator)).json()
        assert (now["version"], now["policy"]["prepaid_recovery_share"]) == (1, "100")

        account = await http.put(
            "/control/v1/accounts/A1",
            json={"contact_numbers": ["+27821234567"], "meters": ["E1"], "essential": True},
            headers=operator,
        )
        assert account.status_code == 200, account.text
        assert account.json()["meters"][0]["meter_id"] == "E1"
        unknown = await http.put(
            "/control/v1/accounts/A2", json={"meters": ["NOPE"]}, headers=operator
        )
        assert unknown.status_code == 422
        arrears = await http.put(
            "/control/v1/accounts/A1/arrears",
            json={"arrears": "900.00", "arrears_since": "2026-08-01", "as_of": "2026-11-30"},
            headers=operator,
        )
        assert arrears.json()["outcome"] == "stored"
        payment = {
            "reference": "PAY-1",
            "account_id": "A1",
            "amount": "300.00",
            "paid_at": "2026-11-30T10:00:00+02:00",
        }
        first = await http.post("/control/v1/payments", json=payment, headers=operator)
        again = await http.post("/control/v1/payments", json=payment, headers=operator)
        assert (first.json()["outcome"], first.json()["arrears"]) == ("stored", "600.00")
        assert (again.json()["outcome"], again.json()["arrears"]) == ("unchanged", "600.00")
        conflicting = await http.post(
            "/control/v1/payments", json={**payment, "amount": "1.00"}, headers=operator
        )
        assert conflicting.status_code == 409
        missing = await http.post(
            "/control/v1/payments",
            json={**payment, "reference": "X", "account_id": "A9"},
            headers=operator,
        )
        assert missing.status_code == 404
        dispute = await http.put(
            "/control/v1/accounts/A1/dispute",
            json={"amount": "200.00", "state": "open", "reason": "meter misread"},
            headers=operator,
        )
        assert (dispute.json()["dispute_state"], dispute.json()["dispute_amount"]) == (
            "open",
            "200.00",
        )
        bad = await http.put(
            "/control/v1/accounts/A1/arrangement", json={"state": "active"}, headers=operator
        )
        assert bad.status_code == 422
        arrangement = await http.put(
            "/control/v1/accounts/A1/arrangement",
            json={"state": "active", "since": "2026-11-30", "instalment": "150.00"},
            headers=operator,
        )
        assert arrangement.json()["arrangement_state"] == "active"
        view = (await http.get("/control/v1/accounts/A1", headers=operator)).json()
        assert view["arrears"] == "600.00"
        assert [p["reference"] for p in view["payments"]] == ["PAY-1"]
        actions = [h["action"] for h in view["history"]]
        assert actions == [
            "control.account",
            "control.arrears",
            "control.payment",
            "control.dispute",
            "control.arrangement",
        ]
        assert (await http.get("/control/v1/accounts/A9", headers=operator)).status_code == 404

        # runs: plan, see, approve once, halt
        await http.put(
            "/control/v1/accounts/A1/arrangement", json={"state": "none"}, headers=operator
        )
        await http.put(
            "/control/v1/accounts/A1/dispute",
            json={"amount": "0", "state": "none"},
            headers=operator,
        )
        planned = await http.post(
            "/control/v1/runs", json={"as_of": "2026-11-30", "accounts": ["A1"]}, headers=operator
        )
        assert planned.status_code == 201, planned.text
        run = planned.json()
        assert [(i["account_id"], i["step"]) for i in run["items"]] == [("A1", "notice")]
        assert (await http.post("/control/v1/runs", json={}, headers=tech)).status_code == 403
        halted = await http.put("/control/v1/halt", json={"halted": True}, headers=operator)
        assert halted.json()["halted"] is True
        blocked = await http.post(f"/control/v1/runs/{run['run_id']}/approve", headers=operator)
        assert blocked.status_code == 409
        await http.put("/control/v1/halt", json={"halted": False}, headers=operator)
        approved = await http.post(f"/control/v1/runs/{run['run_id']}/approve", headers=operator)
        assert approved.status_code == 200, approved.text
        assert approved.json()["items"][0]["state"] == "done"
        twice = await http.post(f"/control/v1/runs/{run['run_id']}/approve", headers=operator)
        assert twice.status_code == 409
        assert (await http.get("/control/v1/runs/999", headers=operator)).status_code == 404
