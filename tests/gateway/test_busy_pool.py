"""Billing, administration and vending-administration routes on a busy database pool: each
answers 503 with ``Retry-After`` after the short connection wait, never a hang or a 500.

Credentials are checked on a pool of their own here, so that the route's own connection
wait is what meets the busy pool (in the service both are the same pool).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.http.app import create_app
from gateway.http.deps import Services
from gateway.http.security import Role, access_from_settings
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.plugins.auth import AuthHeaders

WAIT_S = 0.2

Pools = tuple[AsyncConnectionPool, AsyncConnectionPool]

READ = {"value": 12.5, "read_at": "2026-11-10T09:15:00+02:00", "source": "meter_reader"}
TARIFF = {
    "utility": "electricity",
    "effective_from": "2026-07-01",
    "blocks": [{"from": "0", "to": None, "rate": "2.10"}],
}

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    # billing
    ("POST", "/meters/E1/reads", READ),
    ("GET", "/billing/reviews", None),
    ("POST", "/billing/reviews/1", {"decision": "accept"}),
    ("GET", "/billing/export?period=2026-11", None),
    ("GET", "/billing/corrections", None),
    ("GET", "/billing/limits", None),
    ("PUT", "/billing/limits/water/20mm", {"max_per_day": 12}),
    # administration
    ("GET", "/admin/principals", None),
    ("POST", "/admin/principals", {"name": "till-9", "role": "vendor", "kind": "machine"}),
    ("POST", "/admin/principals/till-9/disable", None),
    ("GET", "/admin/principals/till-9/keys", None),
    ("POST", "/admin/principals/till-9/keys", {"label": "spare"}),
    ("POST", "/admin/keys/1/revoke", None),
    ("GET", "/admin/audit", None),
    # vending administration
    ("PUT", "/accounts/A1", {"arrears": "10.00"}),
    ("GET", "/accounts/A1", None),
    ("POST", "/tariffs", {"tariffs": [TARIFF]}),
    ("GET", "/tariffs", None),
    ("POST", "/vendors/till-9/top-ups", {"amount": "10.00"}),
    ("GET", "/vendors/till-9/statement?date=2026-11-01", None),
    ("PUT", "/supply-groups/123456", {"krn": 1}),
    ("PUT", "/meters/E1/vending-block", {"reason": "tampering"}),
]


@pytest.fixture
async def pools(database_url: str) -> AsyncIterator[Pools]:
    """The API's pool (one connection, for the test to hold) and the credentials' pool."""
    async with (
        AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as api,
        AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as access,
    ):
        await api.wait()
        yield api, access


@pytest.fixture
async def http(
    pools: Pools,
    database_url: str,
    auth_headers: AuthHeaders,
) -> AsyncIterator[httpx.AsyncClient]:
    api, access_pool = pools
    services = Services(
        pool=api,
        mqtt=None,  # type: ignore[arg-type]
        intake=None,  # type: ignore[arg-type]
        pipeline=None,  # type: ignore[arg-type]
        metrics=Metrics(),
    )
    settings = Settings(database_url=database_url, rate_limit_burst=100_000)
    app = create_app(services, access_from_settings(settings, access_pool), db_wait_s=WAIT_S)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
        headers=await auth_headers(database_url, Role.ADMIN),
    ) as client:
        yield client


async def _send(http: httpx.AsyncClient, method: str, path: str, body: Any) -> httpx.Response:
    # The pool's own wait is 30 s: a route still using it would run into this bound.
    async with asyncio.timeout(10):
        return await http.request(method, path, json=body)


async def test_every_route_answers_503_with_retry_after_while_the_pool_is_busy(
    http: httpx.AsyncClient, pools: Pools
) -> None:
    api, _ = pools
    async with api.connection():  # the API pool's only connection, held
        for method, path, body in ROUTES:
            response = await _send(http, method, path, body)
            assert response.status_code == 503, (method, path, response.text)
            assert response.json()["error"]["code"] == "unavailable", (method, path)
            assert int(response.headers["retry-after"]) >= 1, (method, path)
    # With the connection back, the same requests are answered by the routes themselves.
    for method, path, body in ROUTES:
        response = await _send(http, method, path, body)
        assert response.status_code < 500, (method, path, response.text)
