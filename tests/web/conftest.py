"""Fixtures of the field-page tests: people with passwords, a leaking water meter published
through the broker, and headless Debian chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, async_playwright

from gateway.auth import store
from gateway.auth.passwords import hash_password
from gateway.http.security import Role
from gateway.service import GatewayHandle
from gateway.settings import Settings
from tests.plugins.auth import AuthHeaders, remember_secret
from tests.plugins.gateway import MqttTestClient, wait_for_value

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
Q = timedelta(minutes=15)


@dataclass
class Field:
    base: str
    url: str
    http: httpx.AsyncClient
    operator: dict[str, str]
    technician: dict[str, str]
    mqtt_url: str
    topic_prefix: str

    async def person(self, role: Role) -> tuple[str, str]:
        name = f"{role.value}-{uuid.uuid4().hex[:6]}"
        password = f"pw-{uuid.uuid4().hex}"
        remember_secret(password)
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            await store.create_principal(
                conn,
                name=name,
                role=role,
                kind="person",
                password_hash=await hash_password(password),
            )
            await conn.commit()
        return name, password

    async def put_meter(self, meter_id: str, **fields: Any) -> dict[str, Any]:
        response = await self.http.put(f"/meters/{meter_id}", json=fields, headers=self.operator)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def leaking_meter(self, meter_id: str, *, hours: int = 27) -> list[float]:
        """A water meter that used 2 l every 15 min (8 l/h) for ``hours`` up to now, its
        readings published through the broker; waits until detection opened the leak."""
        await self.put_meter(
            meter_id,
            utility="water",
            address="12 Jacaranda Street",
            area="Hatfield",
            latitude=-25.7479,
            longitude=28.2293,
        )
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        end -= timedelta(minutes=end.minute % 15)
        count = hours * 4
        values = [100.0 + 0.002 * k for k in range(count + 1)]
        start = end - count * Q
        readings = [
            {"ts": int((start + k * Q).timestamp() * 1000), "values": {"24.2.1": v}}
            for k, v in enumerate(values)
        ]
        topic = f"{self.topic_prefix}meters/{meter_id}/telemetry"
        async with MqttTestClient(self.mqtt_url) as client:
            await client.publish_all(
                (topic, json.dumps(readings[i : i + 48]).encode())
                for i in range(0, len(readings), 48)
            )

        async def leak_open() -> bool:
            page = await self.http.get(
                "/alerts",
                params={"meter_id": meter_id, "kind": "leak", "state": "open"},
                headers=self.technician,
            )
            return len(page.json()["items"]) == 1

        assert await wait_for_value(leak_open, True, timeout=60)
        return values


@pytest.fixture
async def field(
    gateway: GatewayHandle,
    gateway_settings: Settings,
    mqtt_url: str,
    topic_prefix: str,
    auth_headers: AuthHeaders,
) -> AsyncIterator[Field]:
    url = gateway_settings.database_url.get_secret_value()
    base = f"http://127.0.0.1:{gateway.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        yield Field(
            base=base,
            url=url,
            http=http,
            operator=await auth_headers(url, Role.OPERATOR),
            technician=await auth_headers(url, Role.TECHNICIAN),
            mqtt_url=mqtt_url,
            topic_prefix=topic_prefix,
        )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed (make test installs it: apt-get install chromium)")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
