"""Helpers of the browser tests: a phone-sized page whose console errors are collected and
whose tap targets, labels and landmarks are checked, logging in, and database counts."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.web.conftest import Field

PHONE = {"width": 360, "height": 740}
SHOTS = os.environ.get("FIELD_SCREENSHOT_DIR")
"""Set to a directory (``docs``) to keep phone-width screenshots of the pages visited."""


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=os.path.join(SHOTS, name), full_page=True)


_AUDIT_JS = """() => {
  const small = [], unlabelled = [];
  const controls = 'a[href], button, input:not([type=hidden]), select, textarea, summary';
  for (const el of document.querySelectorAll(controls)) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.right < 0) continue;   // hidden, or the skip link
    if (r.width < 44 || r.height < 44) {
      small.push(el.outerHTML.slice(0, 80) + ` ${r.width}x${r.height}`);
    }
    if (['INPUT', 'SELECT', 'TEXTAREA'].includes(el.tagName)
        && !(el.labels && el.labels.length) && !el.getAttribute('aria-label')) {
      unlabelled.push(el.outerHTML.slice(0, 80));
    }
  }
  return {small, unlabelled, lang: document.documentElement.lang,
          main: document.querySelectorAll('main').length,
          nav: document.querySelectorAll('nav').length};
}"""


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def check(self) -> None:
        audit: dict[str, Any] = await self.page.evaluate(_AUDIT_JS)
        assert audit["small"] == [], audit["small"]
        assert audit["unlabelled"] == [], audit["unlabelled"]
        assert audit["lang"] == "en" and audit["main"] == 1 and audit["nav"] >= 1
        assert self.errors == [], self.errors


async def new_phone(browser: Browser, **options: Any) -> tuple[BrowserContext, Watched]:
    context = await browser.new_context(viewport=PHONE, **options)
    return context, Watched(await context.new_page())


async def log_in(field: Field, w: Watched, name: str, password: str) -> None:
    await w.page.goto(f"{field.base}/field/")
    await expect(w.page.get_by_role("heading", name="Log in")).to_be_visible()
    await w.check()
    await w.page.get_by_label("Name").fill(name)
    await w.page.get_by_label("Password").fill(password)
    await w.page.get_by_role("button", name="Log in").click()
    await expect(w.page.get_by_role("heading", name="Work list")).to_be_visible()


async def db_count(url: str, query: str, *params: Any) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])
