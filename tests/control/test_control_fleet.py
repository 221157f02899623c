"""Credit control carried out on a simulated fleet through the running gateway: a run over
1 000 accounts that disconnects, restricts and reconnects, every command confirmed from the
meters' own state; the execution window, the halt switch and the rate limit; a command that
waits for an offline meter and is re-issued when it comes back."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from firmware_sim.identity import Utility
from gateway.http.security import Role
from tests.control.rig import Customer, Rig, meter_fleet, rows, set_policy, wait_online
from tests.plugins.auth import make_api_key
from tests.plugins.gateway import gateway_running, make_settings, wait_for_value

pytestmark = pytest.mark.timeout(600)

_WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


async def count(url: str, sql: str) -> int:
    return int((await rows(url, sql))[0][0])


async def wait_until_settled(url: str, timeout: float = 240) -> dict[str, int]:
    """Wait until no command is live; the count of commands by state."""
    async with asyncio.timeout(timeout):
        while True:
            live = await rows(
                url,
                "SELECT count(*) FROM meter_commands"
                " WHERE state IN ('planned', 'sent', 'acknowledged', 'expired')",
            )
            if live[0][0] == 0:
                break
            await asyncio.sleep(0.25)
    return dict(await rows(url, "SELECT state, count(*) FROM meter_commands GROUP BY state"))


def fleet_customers() -> list[Customer]:
    customers = [Customer(f"EP{n:04d}", Utility.ELECTRICITY) for n in range(500)]
    customers += [Customer(f"WP{n:04d}", Utility.WATER) for n in range(200)]
    customers += [Customer(f"WI{n:04d}", Utility.WATER, indigent=True) for n in range(100)]
    customers += [Customer(f"ES{n:04d}", Utility.ELECTRICITY, essential=True) for n in range(100)]
    customers += [Customer(f"PP{n:04d}", Utility.ELECTRICITY, prepaid=True) for n in range(100)]
    return customers


def operator_client(port: int | None, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def relay(rig: Rig, account: str) -> str | None:
    state = rig.devices[rig.meters[account]].meter.relay
    return state.value if state is not None else None


def valve(rig: Rig, account: str) -> str | None:
    state = rig.devices[rig.meters[account]].meter.valve
    return state.value if state is not None else None


async def test_a_run_over_1000_accounts_ends_with_every_command_confirmed(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    customers = fleet_customers()
    await set_policy(database_url, commands_per_minute=100_000, reconnection_fee="150.00")
    async with meter_fleet(
        database_url, mqtt_url, topic_prefix, tmp_path, customers, per_connection=50
    ) as rig:
        settings = make_settings(
            database_url, mqtt_url, topic_prefix, master_key_file=rig.master_key,
            command_poll_ms=100, db_pool_max=8,
            # 800 payments arrive at once, as from the billing system: the per-person request
            # rate limit is not what this test is about.
            rate_limit_staff_per_min=0,
        )  # fmt: skip
        key = await make_api_key(database_url, Role.OPERATOR)
        async with (
            gateway_running(settings) as handle,
            operator_client(handle.http_port, key) as http,
        ):
            await wait_online(database_url, list(rig.meters.values()), timeout=120)
            planned = await http.post("/control/v1/runs", json={})
            assert planned.status_code == 201, planned.text
            run = planned.json()
            steps: dict[str, int] = {}
            for item in run["items"]:
                steps[item["step"]] = steps.get(item["step"], 0) + 1
            assert steps == {
                "disconnect": 500,
                "restrict": 300,
                "review": 100,
                "block_vending": 100,
            }
            approved = await http.post(f"/control/v1/runs/{run['run_id']}/approve")
            assert approved.status_code == 200, approved.text
            assert await wait_until_settled(database_url) == {"confirmed": 800}
            # What the meters themselves say, and what the gateway recorded.
            assert all(relay(rig, f"EP{n:04d}") == "disconnected" for n in range(500))
            assert all(valve(rig, f"WP{n:04d}") == "restricted" for n in range(200))
            assert all(valve(rig, f"WI{n:04d}") == "restricted" for n in range(100))
            assert all(relay(rig, f"ES{n:04d}") == "connected" for n in range(100))
            items = (await http.get(f"/control/v1/runs/{run['run_id']}")).json()["items"]
            by_step: dict[str, set[str]] = {}
            for item in items:
                by_step.setdefault(item["step"], set()).add(item["state"])
            assert by_step == {
                "disconnect": {"done"},
                "restrict": {"done"},
                "review": {"done"},
                "block_vending": {"done"},
            }
            essential = await rows(
                database_url,
                "SELECT count(*) FROM meter_commands c JOIN accounts a USING (account_id)"
                " WHERE a.essential",
            )
            assert essential == [(0,)]
            never_closed = await rows(
                database_url, "SELECT count(*) FROM meter_commands WHERE action = 'close_valve'"
            )
            assert never_closed == [(0,)]
            # Everyone pays in full: reconnect / restore at once, outside any window.
            paid = [c.account_id for c in customers if c.account_id[:2] in ("EP", "WP", "WI")]
            for account in paid:
                answer = await http.post(
                    "/control/v1/payments",
                    json={
                        "reference": f"pay-{account}",
                        "account_id": account,
                        "amount": "1500.00",
                        "paid_at": "2026-12-01T08:00:00+02:00",
                    },
                )
                assert answer.status_code == 200, answer.text
            assert await wait_until_settled(database_url) == {"confirmed": 1600}
            assert all(relay(rig, f"EP{n:04d}") == "connected" for n in range(500))
            assert all(valve(rig, a) == "open" for a in paid if a.startswith("W"))
            releases = dict(
                await rows(
                    database_url,
                    "SELECT action, count(*) FROM meter_commands"
                    " WHERE action IN ('reconnect', 'restore') GROUP BY action",
                )
            )
            assert releases == {"reconnect": 500, "restore": 300}
            fees = await rows(
                database_url,
                "SELECT count(*), sum(amount) FROM account_charges WHERE kind = 'reconnection_fee'",
            )
            assert fees == [(800, Decimal("120000.00"))]
            arrears = await rows(
                database_url,
                "SELECT DISTINCT arrears FROM accounts WHERE account_id = ANY(%s)",
                paid,
            )
            assert arrears == [(Decimal("150.00"),)]  # paid in full, then the fee
            notices = dict(
                await rows(database_url, "SELECT kind, count(*) FROM control_notices GROUP BY kind")
            )
            assert notices == {"disconnection": 500, "restriction": 300, "reconnection": 800}
            # One account's whole credit-control history, as an operator sees it.
            view = (await http.get("/control/v1/accounts/EP0007")).json()
            assert [(c["action"], c["state"]) for c in view["commands"]] == [
                ("disconnect", "confirmed"),
                ("reconnect", "confirmed"),
            ]
            assert [n["kind"] for n in view["notices"]] == ["disconnection", "reconnection"]
            assert [(c["kind"], c["amount"]) for c in view["charges"]] == [
                ("reconnection_fee", "150.00")
            ]
            # The account shared with vending shows the same history.
            shared = (await http.get("/accounts/EP0007")).json()
            assert shared["credit_control"]["commands"] == view["commands"]
            assert shared["arrears"] == "150.00"
            actions = [h["action"] for h in view["history"]]
            for expected in (
                "control.order.disconnect",
                "command.order",
                "command.reply",
                "command.finish",
                "control.payment",
                "control.fee",
            ):
                assert expected in actions, (expected, actions)


async def test_orders_wait_for_the_window_the_halt_and_the_rate_limit(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    today = (await rows(database_url, "SELECT now()"))[0][0]
    local_day = today.astimezone(ZoneInfo("Africa/Johannesburg")).weekday()
    other_day = _WEEK[(local_day + 3) % 7]
    await set_policy(database_url, window_days=[other_day], commands_per_minute=3)
    customers = [Customer(f"A{n}", Utility.ELECTRICITY) for n in range(5)]
    async with meter_fleet(database_url, mqtt_url, topic_prefix, tmp_path, customers) as rig:
        settings = make_settings(
            database_url, mqtt_url, topic_prefix, master_key_file=rig.master_key,
            command_poll_ms=50,
        )  # fmt: skip
        key = await make_api_key(database_url, Role.OPERATOR)
        async with (
            gateway_running(settings) as handle,
            operator_client(handle.http_port, key) as http,
        ):
            await wait_online(database_url, list(rig.meters.values()))
            run = (await http.post("/control/v1/runs", json={})).json()
            approved = await http.post(f"/control/v1/runs/{run['run_id']}/approve")
            assert approved.status_code == 200
            outcomes = [i["outcome"] for i in approved.json()["items"]]
            assert all("executes in the window from" in o for o in outcomes), outcomes
            await asyncio.sleep(2)  # 40 passes of the command loop
            waiting = await rows(
                database_url,
                "SELECT count(*) FILTER (WHERE state = 'planned'), count(*) FROM meter_commands",
            )
            assert waiting == [(5, 5)]
            assert await rows(database_url, "SELECT count(*) FROM command_messages") == [(0,)]
            # The window opens, but execution is halted: still nothing.
            halt = await http.put("/control/v1/halt", json={"halted": True, "reason": "storm"})
            assert halt.status_code == 200
            await set_policy(database_url, commands_per_minute=3)
            await asyncio.sleep(2)
            assert await rows(database_url, "SELECT count(*) FROM command_messages") == [(0,)]
            # Resumed: at most 3 commands a minute.
            await http.put("/control/v1/halt", json={"halted": False, "reason": ""})
            sent = "SELECT count(*) FROM command_messages"
            assert await wait_for_value(lambda: count(database_url, sent), 3) == 3
            await asyncio.sleep(2)
            states = dict(
                await rows(database_url, "SELECT state, count(*) FROM meter_commands GROUP BY 1")
            )
            assert states == {"confirmed": 3, "planned": 2}
            assert sum(relay(rig, f"A{n}") == "disconnected" for n in range(5)) == 3


async def test_a_command_to_an_offline_meter_expires_and_is_reissued_when_it_returns(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    await set_policy(database_url, command_ttl_s=3, confirm_timeout_s=1)
    async with meter_fleet(
        database_url, mqtt_url, topic_prefix, tmp_path, [Customer("AWAY", Utility.ELECTRICITY)]
    ) as rig:
        meter_id = rig.meters["AWAY"]
        settings = make_settings(
            database_url, mqtt_url, topic_prefix, master_key_file=rig.master_key,
            command_poll_ms=50,
        )  # fmt: skip
        operator = await make_api_key(database_url, Role.OPERATOR)
        async with (
            gateway_running(settings) as handle,
            operator_client(handle.http_port, operator) as http,
        ):
            await wait_online(database_url, [meter_id])
            await rig.stop_meters()
            offline = await wait_for_value(
                lambda: rows(database_url, "SELECT online FROM meters"), [(False,)]
            )
            assert offline == [(False,)]
            posted = await http.post(f"/meters/{meter_id}/commands", json={"action": "disconnect"})
            command_id = posted.json()["command_id"]
            # Published (the broker keeps it for the meter's session), then expired unanswered.
            state_sql = f"SELECT state FROM meter_commands WHERE command_id = {int(command_id)}"
            expired = await wait_for_value(lambda: rows(database_url, state_sql), [("expired",)])
            assert expired == [("expired",)]
            assert relay(rig, "AWAY") == "connected"
            rig.start_meters()
            state = await wait_until_settled(database_url, timeout=60)
            assert state == {"confirmed": 1}
            messages = await rows(
                database_url,
                "SELECT action, reply_result, reply_reason FROM command_messages"
                " WHERE command_id = %s ORDER BY created_at",
                command_id,
            )
            # The first reached the meter late and was refused as expired; the second did it.
            assert messages == [
                ("disconnect", "rejected", "expired"),
                ("disconnect", "ok", None),
            ]
            assert relay(rig, "AWAY") == "disconnected"
