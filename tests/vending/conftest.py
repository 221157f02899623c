"""Vending test harness: the vending API in-process on a real database, an in-memory key store,
a settable clock, and helpers to register meters, tariffs and floats through the API."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.http.custody import Custody
from gateway.http.errors import install_error_handlers
from gateway.http.meters import router as meters_router
from gateway.http.security import Role, access_from_settings
from gateway.http.vending_admin import install_vending
from gateway.settings import Settings
from gateway.vending.keys import KeyStoreDecoderKeys
from gateway.vending.service import VendingConfig, VendingService
from tokens.keys import (
    DecoderKey,
    Dkga,
    EncryptionAlgorithm,
    KeyParameters,
    KeyType,
    VendingKey,
    derive_decoder_key,
)
from tokens.meter_number import MeterNumber, luhn_check_digit
from tokens.tid import BaseDate

SGC = "123456"
VK1 = "abababababababab"
VK2 = "0123456789abcdef"
VK4 = "00112233445566778899aabbccddeeff00112233"

TARIFF = {
    "utility": "electricity",
    "customer_class": "domestic",
    "effective_from": "2020-01-01",
    "vat_rate": "0.15",
    "fixed_monthly": "0",
    "blocks": [
        {"from": "0", "to": "100", "rate": "2.00"},
        {"from": "100", "to": "400", "rate": "2.50"},
        {"from": "400", "to": "650", "rate": "3.00"},
        {"from": "650", "to": None, "rate": "3.50"},
    ],
}
WATER_TARIFF = {
    "utility": "water",
    "customer_class": "domestic",
    "effective_from": "2020-01-01",
    "vat_rate": "0.15",
    "blocks": [{"from": "0", "to": "6", "rate": "20.00"}, {"from": "6", "to": None, "rate": "30"}],
}


class MemoryKeyStore:
    """Vending keys held in memory for tests (the real store keeps them encrypted)."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, int, str], VendingKey] = {}

    def add(self, sgc: str, krn: int, dkga: str, hex_key: str) -> None:
        self.keys[(sgc, krn, dkga)] = VendingKey.from_hex(dkga, hex_key)

    async def vending_key(
        self, *, conn: AsyncConnection[Any], sgc: str, krn: int, dkga: str
    ) -> VendingKey | None:
        del conn
        return self.keys.get((sgc, krn, dkga))


class Clock:
    def __init__(self) -> None:
        self.now: datetime | None = None

    def __call__(self) -> datetime:
        return self.now or datetime.now(UTC)

    def advance(self, **kwargs: float) -> None:
        self.now = self() + timedelta(**kwargs)


_serials = itertools.count(int(datetime.now(UTC).timestamp()) % 10_000_000 * 10)


def new_drn() -> str:
    serial = f"{next(_serials) % 10**10:010d}"
    return serial + str(luhn_check_digit(serial))


def decoder_key(
    drn: str,
    *,
    krn: int = 1,
    base: int = 2014,
    dkga: str = "02",
    vk: str = VK1,
    ti: int = 1,
    sgc: str = SGC,
) -> DecoderKey:
    params = KeyParameters(
        meter=MeterNumber.from_drn(drn),
        key_type=KeyType.UNIQUE,
        sgc=sgc,
        ti=ti,
        krn=krn,
        base_date=BaseDate(base),
        ea=EncryptionAlgorithm.EA07,
    )
    return derive_decoder_key(VendingKey.from_hex(Dkga(dkga), vk), params)


@dataclass
class Vend:
    """The vending API in-process, with helpers."""

    client: httpx.AsyncClient
    service: VendingService
    pool: AsyncConnectionPool[Any]
    keys: MemoryKeyStore
    clock: Clock
    database_url: str
    operator: dict[str, str]
    make_headers: Callable[[str, Role], Awaitable[dict[str, str]]]
    tariffs_loaded: bool = field(default=False)

    async def vendor(self, float_amount: str | None = "1000.00") -> dict[str, str]:
        headers = await self.make_headers(self.database_url, Role.VENDOR)
        if float_amount is not None:
            await self.top_up(headers, float_amount)
        return headers

    async def vendor_name(self, headers: dict[str, str]) -> str:
        response = await self.client.get("/vend/v1/float", headers=headers)
        assert response.status_code == 200, response.text
        name: str = response.json()["vendor"]
        return name

    async def top_up(self, headers: dict[str, str], amount: str) -> None:
        name = await self.vendor_name(headers)
        response = await self.client.post(
            f"/vendors/{name}/top-ups", json={"amount": amount}, headers=self.operator
        )
        assert response.status_code == 200, response.text

    async def load_tariffs(self) -> None:
        if not self.tariffs_loaded:
            response = await self.client.post(
                "/tariffs", json={"tariffs": [TARIFF, WATER_TARIFF]}, headers=self.operator
            )
            assert response.status_code == 200, response.text
            self.tariffs_loaded = True

    async def meter(
        self,
        *,
        utility: str = "electricity",
        payment: str = "prepaid",
        krn: int = 1,
        base_date: int = 2014,
        dkga: str = "02",
        account: str | None = None,
        drn: str | None = None,
    ) -> str:
        await self.load_tariffs()
        drn = drn or new_drn()
        body: dict[str, Any] = {
            "utility": utility,
            "payment": payment,
            "sts": {
                "sgc": SGC,
                "krn": krn,
                "ti": 1,
                "key_type": 2,
                "base_date": base_date,
                "ea": "07",
                "dkga": dkga,
            },
        }
        if account is not None:
            body["account"] = account
        response = await self.client.put(f"/meters/{drn}", json=body, headers=self.operator)
        assert response.status_code == 200, response.text
        return drn

    async def account(self, account_id: str, **fields: Any) -> dict[str, Any]:
        response = await self.client.put(
            f"/accounts/{account_id}", json=fields, headers=self.operator
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def credit(
        self, headers: dict[str, str], meter: str, amount: str, request_id: str | None = None
    ) -> httpx.Response:
        return await self.client.post(
            "/vend/v1/credit",
            json={
                "request_id": request_id or f"r-{next(_serials)}",
                "meter": meter,
                "amount": amount,
            },
            headers=headers,
        )

    async def scalar(self, query: str, *params: Any) -> Any:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
            return None if row is None else row[0]

    async def fetchone(self, query: str, *params: Any) -> tuple[Any, ...] | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row

    async def execute(self, query: str, *params: Any) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(query, params)


def build_app(
    service: VendingService, access_pool: AsyncConnectionPool[Any] | None = None
) -> FastAPI:
    """The meters and vending routes with the gateway's real access control and error table
    (rate limits off: the concurrency tests send bursts on purpose)."""
    app = FastAPI()
    app.state.services = _PoolOnly(service.pool)
    app.state.db_wait_s = 5.0
    settings = Settings(rate_limit_vendor_per_min=0, rate_limit_staff_per_min=0)
    app.state.access = access_from_settings(settings, access_pool or service.pool)
    app.state.custody = Custody()
    install_error_handlers(app)
    app.include_router(meters_router)
    install_vending(app, service)
    return app


@dataclass(frozen=True)
class _PoolOnly:
    pool: AsyncConnectionPool[Any]


@pytest.fixture
async def vend(
    database_url: str, auth_headers: Callable[[str, Role], Awaitable[dict[str, str]]]
) -> AsyncIterator[Vend]:
    keys = MemoryKeyStore()
    keys.add(SGC, 1, "02", VK1)
    keys.add(SGC, 2, "02", VK2)
    keys.add(SGC, 1, "04", VK4)
    clock = Clock()
    async with AsyncConnectionPool(database_url, min_size=1, max_size=10, open=False) as pool:
        await pool.wait()
        service = VendingService(pool, KeyStoreDecoderKeys(keys), VendingConfig(), clock=clock)
        app = build_app(service)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vend.test") as client:
            operator = await auth_headers(database_url, Role.OPERATOR)
            yield Vend(client, service, pool, keys, clock, database_url, operator, auth_headers)
