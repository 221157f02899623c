"""The field page in real headless chromium against the real gateway, database and broker.

A water meter's readings go through the broker, detection opens a leak, and a technician on a
360 px wide screen logs in, finds it on the work list, opens the meter, sees the readings in the
chart, acknowledges the alert, records a read while offline (sent once when back online), is
refused an operator's action, and loses the session when it expires. Every page visited is
checked for tap-target sizes, labelled controls and console errors.
"""

from __future__ import annotations

import asyncio

from playwright.async_api import Browser, expect

from gateway.http.security import Role
from tests.plugins.gateway import wait_for_value
from tests.web.conftest import Field
from tests.web.phone import db_count, log_in, new_phone, shot


async def test_a_technician_works_a_leak_from_the_work_list(field: Field, browser: Browser) -> None:
    await field.leaking_meter("W7")
    name, password = await field.person(Role.TECHNICIAN)
    context, w = await new_phone(browser)
    page = w.page
    await log_in(field, w, name, password)
    await w.check()

    card = page.get_by_role("listitem").filter(has=page.get_by_role("link", name="Meter W7"))
    await expect(card).to_contain_text("leak")
    await expect(card).to_contain_text("12 Jacaranda Street, Hatfield")
    maps = card.get_by_role("link", name="Open in maps")
    assert (await maps.get_attribute("href") or "").startswith("geo:-25.747900,28.229300")
    await shot(page, "field-worklist.png")
    await page.get_by_label("Area").select_option("Hatfield")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_role("link", name="Meter W7")).to_be_visible()

    response = await page.goto(f"{field.base}/field/meters/W7")
    assert response is not None and response.ok
    html = await response.body()
    css = await field.http.get("/field/static/app.css")
    js = await field.http.get("/field/static/app.js")
    assert len(html) + len(css.content) + len(js.content) < 100_000
    await expect(page.get_by_role("heading", name="Meter W7", level=1)).to_be_visible()
    await expect(page.get_by_role("heading", name="leak warning")).to_be_visible()
    await w.check()

    # 8 l/h of use: every full hour of the last 24 h shows 0.008 m3 in the chart.
    chart = page.get_by_role("img", name="Consumption per hour")
    await expect(chart).to_be_visible()
    bars = await chart.locator("rect title").all_text_contents()
    assert sum(t.endswith(": 0.008 m3") for t in bars) >= 22, bars
    latest = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="24.2.1"))
    await expect(latest).to_contain_text("m3")
    await expect(page.get_by_role("heading", name="Command history")).to_be_visible()
    await expect(page.get_by_role("button", name="Read state now")).to_be_visible()
    await shot(page, "field-meter-card.png")

    # Acknowledge the leak with a note: sent to the JSON API, shown after the page refreshes.
    await page.get_by_label("Note for alert").fill("valve checked, customer informed")
    await page.get_by_role("button", name="Acknowledge").click()
    await expect(page.get_by_text(f"acknowledged by {name}")).to_be_visible(timeout=15_000)

    # Offline: the read is queued, the page says so, and it is sent once when back online.
    await context.set_offline(True)
    await page.get_by_label("Register value").fill("100.25")
    await page.get_by_role("button", name="Record read").click()
    status = page.get_by_role("status").filter(has_text="data as of")
    await expect(status).to_contain_text("Offline")
    await expect(status).to_contain_text("1 action waiting to send")
    queued = await page.evaluate("JSON.parse(localStorage.getItem('gw-field-queue')).length")
    assert queued == 1
    reads = "SELECT count(*) FROM billing_reads WHERE meter_id = %s"
    assert await db_count(field.url, reads, "W7") == 0
    await context.set_offline(False)
    await page.evaluate("window.dispatchEvent(new Event('online'))")  # and a second flush
    await wait_for_value(lambda: db_count(field.url, reads, "W7"), 1, timeout=30)
    await expect(page.get_by_role("heading", name="Meter W7", level=1)).to_be_visible()
    await asyncio.sleep(1.0)
    assert await page.evaluate("localStorage.getItem('gw-field-queue')") == "[]"
    assert await db_count(field.url, reads, "W7") == 1
    assert w.errors == [], w.errors
    await context.close()


async def test_roles_decide_the_controls_and_the_server_refuses_them(
    field: Field, browser: Browser
) -> None:
    await field.put_meter("U1", utility="electricity", verified=False)
    tech, tech_pw = await field.person(Role.TECHNICIAN)
    context, w = await new_phone(browser)
    await log_in(field, w, tech, tech_pw)
    await w.page.goto(f"{field.base}/field/meters/U1")
    await expect(w.page.get_by_role("heading", name="Meter U1", level=1)).to_be_visible()
    await expect(w.page.get_by_role("button", name="Record read")).to_be_visible()
    await expect(w.page.get_by_role("button", name="Confirm meter")).to_have_count(0)
    await w.check()
    forced = await w.page.evaluate(
        """async () => (await fetch('/meters/U1/verify', {method: 'POST', headers: {
             'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}})).status"""
    )
    assert forced == 403
    no_csrf = await w.page.evaluate(
        "async () => (await fetch('/alerts/1/acknowledge', {method: 'POST', headers: "
        "{'Content-Type': 'application/json'}, body: '{\"note\": \"x\"}'})).status"
    )
    assert no_csrf == 403
    assert await db_count(field.url, "SELECT count(*) FROM meters WHERE verified") == 0

    # The session ends: the next page asks for a login again.
    await db_count(
        field.url,
        "WITH e AS (UPDATE sessions SET expires_at = now() - interval '1 second'"
        " WHERE principal_id = (SELECT id FROM principals WHERE name = %s) RETURNING 1)"
        " SELECT count(*) FROM e",
        tech,
    )
    await w.page.reload()
    await expect(w.page.get_by_role("heading", name="Log in")).to_be_visible()
    await context.close()

    op, op_pw = await field.person(Role.OPERATOR)
    context, w = await new_phone(browser)
    await log_in(field, w, op, op_pw)
    await w.page.goto(f"{field.base}/field/meters/U1")
    await w.page.get_by_role("button", name="Confirm meter").click()
    await wait_for_value(
        lambda: db_count(field.url, "SELECT count(*) FROM meters WHERE verified"), 1
    )
    assert w.errors == [], w.errors
    await context.close()


async def test_search_by_number_without_its_check_digit_then_log_out(
    field: Field, browser: Browser
) -> None:
    await field.put_meter("04040404040", utility="electricity", address="7 Acacia Avenue")
    name, password = await field.person(Role.TECHNICIAN)
    context, w = await new_phone(browser)
    await log_in(field, w, name, password)
    await w.page.get_by_role("link", name="Search").click()
    box = w.page.get_by_role("searchbox").or_(
        w.page.get_by_label("Meter number, account or address")
    )
    await box.fill("0404040404")
    await w.page.get_by_role("button", name="Search").click()
    await expect(w.page.get_by_role("link", name="Meter 04040404040")).to_be_visible()
    await w.check()
    await w.page.get_by_role("button", name=f"Log out {name}").click()
    await expect(w.page.get_by_role("heading", name="Log in")).to_be_visible()
    await w.page.goto(f"{field.base}/field/search")
    await expect(w.page.get_by_role("heading", name="Log in")).to_be_visible()
    sessions = "SELECT count(*) FROM sessions s JOIN principals p ON p.id = s.principal_id"
    assert await db_count(field.url, sessions + " WHERE p.name = %s", name) == 0
    assert w.errors == [], w.errors
    await context.close()
