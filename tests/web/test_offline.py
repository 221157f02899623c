"""The field page without a connection, in real headless chromium (Playwright's offline mode
cuts the pages and the service worker alike).

Pages opened online open again offline from the service worker's cache, marked as saved
copies with their data's age; a page never opened shows the offline page instead of the
browser's error page; an action taken on a saved copy is queued and sent once when the
connection is back; logging out (online or offline) leaves no saved page on the phone.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from playwright.async_api import Browser, Dialog, Page, expect

from gateway.http.security import Role
from tests.plugins.gateway import wait_for_value
from tests.web.conftest import Field
from tests.web.phone import db_count, log_in, new_phone

ZONE = "Africa/Johannesburg"
READS = "SELECT count(*) FROM billing_reads WHERE meter_id = %s"
SESSIONS = (
    "SELECT count(*) FROM sessions s JOIN principals p ON p.id = s.principal_id WHERE p.name = %s"
)
_SAVED_JS = """async () => (await caches.has('gw-field-pages'))
  ? (await (await caches.open('gw-field-pages')).keys()).map(r => r.url) : []"""


async def saved_pages(page: Page) -> list[str]:
    urls: list[str] = await page.evaluate(_SAVED_JS)
    return urls


async def until_saved(page: Page, url: str) -> None:
    await page.wait_for_function(
        "async url => (await caches.open('gw-field-pages')).match(url).then(r => !!r)", arg=url
    )


async def worker_in_control(page: Page) -> None:
    await page.wait_for_function("!!navigator.serviceWorker.controller")


async def test_a_card_seen_online_opens_offline_with_its_age_and_its_action_is_sent_once(
    field: Field, browser: Browser
) -> None:
    await field.put_meter("W8", utility="water", address="5 Marula Close", area="Brooklyn")
    name, password = await field.person(Role.TECHNICIAN)
    context, w = await new_phone(browser, timezone_id=ZONE)
    page = w.page
    await log_in(field, w, name, password)
    await worker_in_control(page)
    # The work list was loaded before the worker took control: it asked for its own copy.
    await until_saved(page, f"{field.base}/field/")

    card = f"{field.base}/field/meters/W8"
    before = datetime.now(ZoneInfo(ZONE))
    await page.goto(card)
    after = datetime.now(ZoneInfo(ZONE))
    await expect(page.get_by_role("heading", name="Meter W8", level=1)).to_be_visible()
    await until_saved(page, card)

    # Two hours later, with no connection: the reload shows the saved card and its age.
    await context.set_offline(True)
    await context.clock.install(time=datetime.now(UTC) + timedelta(hours=2, minutes=1))
    await page.reload()
    await expect(page.get_by_role("heading", name="Meter W8", level=1)).to_be_visible()
    await expect(page.get_by_text("5 Marula Close, Brooklyn")).to_be_visible()
    status = page.get_by_role("status").filter(has_text="data as of")
    await expect(status).to_contain_text("Offline · saved copy of this page")
    await expect(status).to_contain_text("(2 h ago)")
    text = await status.text_content() or ""
    assert any(f"{t:%H:%M}" in text for t in (before, after)), text
    await w.check()

    # A page never opened: the offline page, listing what is saved, not the browser's error.
    response = await page.goto(f"{field.base}/field/meters/NEVER-OPENED")
    assert response is not None and response.ok
    await expect(page.get_by_role("heading", name="No connection")).to_be_visible()
    await expect(page.get_by_role("link", name="Work list").last).to_be_visible()
    await w.check()
    await page.get_by_role("link", name="Meter W8").click()
    await expect(page.get_by_role("heading", name="Meter W8", level=1)).to_be_visible()

    # An action on the saved copy waits in the queue, and is sent once when back online
    # (the phone's clock back at the real time: a read is refused with a time in the future).
    await context.clock.set_system_time(datetime.now(UTC))
    await page.get_by_label("Register value").fill("42.5")
    await page.get_by_role("button", name="Record read").click()
    await expect(status).to_contain_text("1 action waiting to send")
    assert await db_count(field.url, READS, "W8") == 0
    await context.set_offline(False)
    await page.evaluate("window.dispatchEvent(new Event('online'))")  # and a second flush
    await wait_for_value(lambda: db_count(field.url, READS, "W8"), 1, timeout=30)
    # Sent: the page reloads from the network, as a current page.
    await expect(status).to_contain_text("Online", timeout=15_000)
    await expect(status).not_to_contain_text("saved copy")
    await asyncio.sleep(1.0)
    assert await page.evaluate("localStorage.getItem('gw-field-queue')") == "[]"
    assert await db_count(field.url, READS, "W8") == 1
    assert w.errors == [], w.errors
    await context.close()


async def test_logging_out_leaves_no_saved_page_on_the_phone(
    field: Field, browser: Browser
) -> None:
    await field.put_meter("W9", utility="water", address="8 Kiaat Street")
    name, password = await field.person(Role.TECHNICIAN)
    context, w = await new_phone(browser)
    page = w.page
    await log_in(field, w, name, password)
    await worker_in_control(page)
    card = f"{field.base}/field/meters/W9"
    await page.goto(card)
    await until_saved(page, card)
    assert card in await saved_pages(page)

    await page.get_by_role("button", name=f"Log out {name}").click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert await saved_pages(page) == []
    assert await db_count(field.url, SESSIONS, name) == 0

    # The next person on this phone, offline, finds nothing of the card.
    await context.set_offline(True)
    await page.goto(card)
    await expect(page.get_by_role("heading", name="No connection")).to_be_visible()
    await expect(page.get_by_text("No pages are saved on this phone.")).to_be_visible()
    assert "8 Kiaat Street" not in await page.content()
    assert w.errors == [], w.errors
    await context.close()


async def test_logging_out_offline_clears_the_phone_and_ends_the_session_when_back_online(
    field: Field, browser: Browser
) -> None:
    await field.put_meter("W10", utility="water", address="3 Tambotie Road")
    name, password = await field.person(Role.TECHNICIAN)
    context, w = await new_phone(browser)
    page = w.page
    await log_in(field, w, name, password)
    await worker_in_control(page)
    card = f"{field.base}/field/meters/W10"
    await page.goto(card)
    await until_saved(page, card)

    await context.set_offline(True)
    await page.get_by_label("Register value").fill("7")
    await page.get_by_role("button", name="Record read").click()
    status = page.get_by_role("status").filter(has_text="data as of")
    await expect(status).to_contain_text("1 action waiting to send")
    warnings: list[str] = []

    async def accept(dialog: Dialog) -> None:
        warnings.append(dialog.message)
        await dialog.accept()

    page.once("dialog", accept)
    await page.get_by_role("button", name=f"Log out {name}").click()
    await expect(page.get_by_text("Logged out on this phone")).to_be_visible()
    assert warnings == ["1 action has not been sent yet and will be lost. Log out anyway?"]
    assert await saved_pages(page) == []
    assert await page.evaluate("localStorage.getItem('gw-field-queue')") is None
    assert await db_count(field.url, SESSIONS, name) == 1  # the server has not heard yet

    # Back online: the logout goes first, so the next page asks for a login.
    await context.set_offline(False)
    await page.goto(f"{field.base}/field/")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert await db_count(field.url, SESSIONS, name) == 0
    assert await db_count(field.url, READS, "W10") == 0
    assert w.errors == [], w.errors
    await context.close()
