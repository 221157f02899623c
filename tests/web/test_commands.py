"""Commands to meters from the meter card, in real headless chromium against the real gateway,
database and broker.

The meters' supply state arrives as their status through the broker. A technician reconnects
a disconnected electricity meter while offline (queued, sent once with its Idempotency-Key when
back online), restores a restricted water meter, follows each command in the card's history and
its last command's confirmation, and finds the commands that failed on the work list. This
gateway has no key store, so nothing signs or sends the commands: the test moves them on as the
command loop would (``finish``, the loop's own function), from ``sent``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
from playwright.async_api import Browser, expect

from gateway.control.commands import finish
from gateway.control.lifecycle import CommandState
from gateway.http.security import Role
from tests.plugins.gateway import MqttTestClient, wait_for_value
from tests.web.conftest import Field
from tests.web.phone import db_count, log_in, new_phone

COMMANDS = "SELECT count(*) FROM meter_commands WHERE meter_id = %s"


async def publish_status(field: Field, meter_id: str, **state: Any) -> None:
    topic = f"{field.topic_prefix}meters/{meter_id}/status"
    async with MqttTestClient(field.mqtt_url) as client:
        await client.publish_all([(topic, json.dumps({"state": "online", **state}).encode())])

    async def reported() -> dict[str, Any]:
        card = await field.http.get(f"/meters/{meter_id}/card", headers=field.technician)
        body: dict[str, Any] = card.json()
        return {k: body[k] for k in state if k in ("relay", "valve")}

    wanted = {k: v for k, v in state.items() if k in ("relay", "valve")}
    assert await wait_for_value(reported, wanted, timeout=30) == wanted


async def end_command(
    field: Field, meter_id: str, state: CommandState, outcome: str, **confirmed: str
) -> int:
    """Move the meter's newest command to ``sent`` (as the dispatcher does), then end it."""
    async with await psycopg.AsyncConnection.connect(field.url) as conn:
        cur = await conn.execute(
            "UPDATE meter_commands SET state = 'sent', sent_at = now() WHERE command_id ="
            " (SELECT max(command_id) FROM meter_commands WHERE meter_id = %s)"
            " RETURNING command_id",
            (meter_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        assert await finish(
            conn,
            row[0],
            state,
            outcome,
            actor="command-loop",
            confirmed_state=dict(confirmed) if confirmed else None,
        )
        await conn.commit()
    return int(row[0])


async def command_rows(url: str, meter_id: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT action, origin, requested_by, reason, state FROM meter_commands"
            " WHERE meter_id = %s ORDER BY command_id",
            (meter_id,),
        )
        return await cur.fetchall()


async def test_a_technician_reconnects_and_restores_and_follows_the_commands(
    field: Field, browser: Browser
) -> None:
    await field.put_meter("E5", utility="electricity", address="4 Wild Fig Avenue")
    await field.put_meter("W11", utility="water", address="9 Karee Close")
    await field.put_meter("E6", utility="electricity", reconnect_mode="arm")
    await publish_status(field, "E5", relay="disconnected", credit=0.0)
    await publish_status(field, "W11", valve="restricted", credit=1.5)
    await publish_status(field, "E6", relay="disconnected")
    name, password = await field.person(Role.TECHNICIAN)
    context, w = await new_phone(browser)
    page = w.page
    await log_in(field, w, name, password)

    # A disconnected electricity meter: its relay, no command yet, read state or reconnect.
    await page.goto(f"{field.base}/field/meters/E5")
    supply = page.get_by_role("region", name="Supply")
    await expect(supply).to_contain_text("Relay")
    await expect(supply).to_contain_text("disconnected")
    await expect(page.locator("#last-command")).to_have_text("none")
    await expect(page.get_by_role("button", name="Read state now")).to_be_visible()
    await expect(page.get_by_role("button", name="Reconnect", exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="Arm for reconnection")).to_have_count(0)
    await expect(page.get_by_text("No commands sent to this meter.")).to_be_visible()
    await w.check()

    # Offline: the reconnect waits in the queue; back online it is sent once.
    await context.set_offline(True)
    await page.get_by_label("Reason (kept in the audit log)").fill("arrears paid at the office")
    await page.get_by_role("button", name="Reconnect", exact=True).click()
    status = page.get_by_role("status").filter(has_text="data as of")
    await expect(status).to_contain_text("1 action waiting to send")
    assert await db_count(field.url, COMMANDS, "E5") == 0
    await context.set_offline(False)
    await page.evaluate("window.dispatchEvent(new Event('online'))")  # and a second flush
    await wait_for_value(lambda: db_count(field.url, COMMANDS, "E5"), 1, timeout=30)
    await asyncio.sleep(1.0)
    assert await command_rows(field.url, "E5") == [
        ("reconnect", "manual", name, "arrears paid at the office", "planned")
    ]
    # The page reloads: the command in the history, and not offered a second time.
    history = page.get_by_role("row").filter(has_text="reconnect by")
    await expect(history).to_contain_text("planned: waiting to be sent", timeout=15_000)
    await expect(history).to_contain_text("(arrears paid at the office)")
    await expect(page.get_by_role("button", name="Reconnect", exact=True)).to_have_count(0)
    await expect(page.get_by_role("button", name="Read state now")).to_be_visible()
    await w.check()

    # The meter's state confirms it: the card's last command says so.
    await end_command(
        field,
        "E5",
        CommandState.CONFIRMED,
        "the meter reports relay=connected valve=None",
        relay="connected",
    )
    await page.reload()
    last = page.locator("#last-command")
    await expect(last).to_contain_text(f"reconnect by {name}")
    await expect(last).to_contain_text("confirmed")
    await expect(last).to_contain_text("the meter reports relay connected")

    # A read_state the meter refuses puts the meter on the work list.
    await page.get_by_role("button", name="Read state now").click()
    await wait_for_value(lambda: db_count(field.url, COMMANDS, "E5"), 2, timeout=30)
    await end_command(
        field, "E5", CommandState.REJECTED, "the meter refused read_state: bad_signature"
    )

    # A restricted water meter: restore, sent online; it is never confirmed.
    await page.goto(f"{field.base}/field/meters/W11")
    await expect(page.get_by_role("region", name="Supply")).to_contain_text("restricted")
    await expect(page.get_by_role("button", name="Reconnect", exact=True)).to_have_count(0)
    await page.get_by_role("button", name="Restore full flow").click()
    await wait_for_value(lambda: db_count(field.url, COMMANDS, "W11"), 1, timeout=30)
    assert [r[0] for r in await command_rows(field.url, "W11")] == ["restore"]
    await end_command(
        field, "W11", CommandState.UNCONFIRMED, "no valve state from the meter after 2 retries"
    )

    # An arm-mode meter is armed, not reconnected.
    await page.goto(f"{field.base}/field/meters/E6")
    await expect(page.get_by_role("button", name="Arm for reconnection")).to_be_visible()
    await expect(page.get_by_role("button", name="Reconnect", exact=True)).to_have_count(0)

    # The work list: both failed commands, most severe (the refused signature) first.
    await page.goto(f"{field.base}/field/")
    entries = page.get_by_role("listitem").filter(has=page.get_by_role("heading", level=2))
    await expect(entries.nth(0)).to_contain_text("Meter E5")
    await expect(entries.nth(0)).to_contain_text(
        "Read state refused by the meter: the meter refused read_state: bad_signature"
    )
    await expect(entries.nth(1)).to_contain_text("Meter W11")
    await expect(entries.nth(1)).to_contain_text(
        "Restore not confirmed: no valve state from the meter after 2 retries"
    )
    await page.get_by_label("Kind").select_option("command_unconfirmed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_role("link", name="Meter W11")).to_be_visible()
    await expect(page.get_by_role("link", name="Meter E5")).to_have_count(0)
    await w.check()
    assert w.errors == [], w.errors
    await context.close()
