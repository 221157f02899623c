"""The HTTP edge: one error shape, no 500 for hostile text, 413 for big bodies, 503 when the
database cannot serve, against a running gateway and a real database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from gateway.http.security import Role
from gateway.service import GatewayHandle
from tests.plugins.auth import AuthHeaders
from tests.plugins.gateway import gateway_running, make_settings, wait_for_value

METER = {"utility": "electricity", "time_zone": "Africa/Johannesburg"}


def assert_error_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) <= {"code", "message", "fields"}
    return error


@pytest.fixture
async def http(
    gateway: GatewayHandle, database_url: str, auth_headers: AuthHeaders
) -> AsyncIterator[httpx.AsyncClient]:
    headers = await auth_headers(database_url, Role.OPERATOR)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}", headers=headers
    ) as client:
        yield client


@pytest.mark.parametrize(
    "body",
    [
        {**METER, "time_zone": "Africa/Johannes\x00burg"},
        {
            **METER,
            "transport": "modbus",
            "modbus_host": "10.0.0.\x005",
            "modbus_port": 502,
            "modbus_unit": 1,
        },
        {**METER, "register_map": {"1.8.0\x00": {"address": 0}}},
        {**METER, "register_map": {"1.8.0": {"address": 0, "note": "a\x00b"}}},
    ],
    ids=["time_zone", "modbus_host", "map_key", "map_value"],
)
async def test_nul_in_any_string_is_a_422_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await http.put("/meters/M-NUL", json=body)
    error = assert_error_shape(response, 422, "invalid_request")
    assert error["fields"], error
    assert "NUL" in json.dumps(error)
    assert (await http.get("/meters/M-NUL")).status_code == 404  # nothing was stored


@pytest.mark.parametrize("field", ["time_zone", "modbus_host", "payment"])
async def test_lone_surrogate_is_a_422_that_encodes(http: httpx.AsyncClient, field: str) -> None:
    # json.dumps would escape the surrogate as \\ud800, which is exactly what a client sends.
    content = json.dumps({**METER, field: "x\ud800y"}).encode()
    assert b"\\ud800" in content
    response = await http.put(
        "/meters/M-SUR", content=content, headers={"content-type": "application/json"}
    )
    error = assert_error_shape(response, 422, "invalid_request")
    assert any(problem["field"].endswith(field) for problem in error["fields"]), error


async def test_validation_errors_do_not_echo_large_input(http: httpx.AsyncClient) -> None:
    secret_like = "Z" * 200_000
    response = await http.put("/meters/M-BIG", json={**METER, "time_zone": secret_like})
    error = assert_error_shape(response, 422, "invalid_request")
    assert "ZZZZZZZZZZ" not in response.text
    assert len(response.content) < 4096
    assert [p["field"] for p in error["fields"]] == ["body.time_zone"]


async def test_not_found_method_not_allowed_and_bad_json_share_the_shape(
    http: httpx.AsyncClient,
) -> None:
    assert_error_shape(await http.get("/meters/NOPE"), 404, "not_found")
    assert_error_shape(await http.get("/no/such/route"), 404, "not_found")
    wrong_method = await http.delete("/meters/NOPE")
    assert_error_shape(wrong_method, 405, "method_not_allowed")
    assert "GET" in wrong_method.headers["allow"]
    bad_json = await http.put(
        "/meters/M1", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error_shape(bad_json, 422, "invalid_request")
    deep = b"[" * 100_000 + b"]" * 100_000
    too_deep = await http.put(
        "/meters/M1", content=deep[:500_000], headers={"content-type": "application/json"}
    )
    assert too_deep.status_code in (400, 422)
    assert too_deep.json()["error"]["code"] in ("bad_request", "invalid_request")
    missing = await http.put("/meters/M1", json={})
    error = assert_error_shape(missing, 422, "invalid_request")
    assert error["fields"] == [{"field": "body.utility", "message": "Field required"}]


async def test_request_body_over_the_limit_is_413(
    auth_headers: AuthHeaders, database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    settings = make_settings(database_url, mqtt_url, topic_prefix, http_max_body_bytes=4096)
    async with (
        gateway_running(settings) as handle,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{handle.http_port}",
            headers=await auth_headers(database_url, Role.OPERATOR),
        ) as http,
    ):
        padding = {"register_map": {"1.8.0": {"address": 0}}, "pad": "p" * 5000}
        declared = await http.put("/meters/M-413", json={**METER, **padding})
        assert_error_shape(declared, 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
            yield json.dumps(METER)[:-1].encode()
            for _ in range(10):
                yield b', "pad": "' + b"p" * 1000 + b'"'
            yield b"}"

        streamed = await http.put(
            "/meters/M-413", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in streamed.request.headers
        assert_error_shape(streamed, 413, "payload_too_large")
        # Under the limit the same route works, and the refused bodies stored nothing.
        assert (await http.get("/meters/M-413")).status_code == 404
        assert (await http.put("/meters/M-413", json=METER)).status_code == 200


async def test_busy_database_pool_is_a_503_with_retry_after(
    auth_headers: AuthHeaders,
    database_url: str,
    mqtt_url: str,
    topic_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One pooled connection, and no detection loop to share it: the test holds it itself.
    settings = make_settings(
        database_url,
        mqtt_url,
        topic_prefix,
        db_pool_min=1,
        db_pool_max=1,
        http_db_wait_ms=200,
        detection_enabled=False,
    )
    async with (
        gateway_running(settings) as handle,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{handle.http_port}",
            headers=await auth_headers(database_url, Role.OPERATOR),
        ) as http,
    ):
        assert (await http.put("/meters/M-503", json=METER)).status_code == 200
        async with handle.services.pool.connection():  # the only connection, held
            started = asyncio.get_running_loop().time()
            busy = await http.get("/meters/M-503")
            waited = asyncio.get_running_loop().time() - started
            assert_error_shape(busy, 503, "unavailable")
            assert int(busy.headers["retry-after"]) >= 1
            assert_error_shape(await http.get("/meters"), 503, "unavailable")
            # a change refused for want of a connection took no effect: the audit middleware
            # does not queue for a connection to record it (nor report a lost record)
            refused = await http.put("/meters/M-504", json=METER)
            assert_error_shape(refused, 503, "unavailable")
        assert waited < 10  # well under the pool's own 30 s default
        assert not [r for r in caplog.records if "could not write the audit record" in r.message]
        assert (await http.get("/meters/M-503")).status_code == 200


async def test_database_down_is_a_503_not_a_500(
    auth_headers: AuthHeaders, database_url: str, mqtt_url: str, topic_prefix: str, admin_url: str
) -> None:
    settings = make_settings(database_url, mqtt_url, topic_prefix, http_db_wait_ms=300)
    async with (
        gateway_running(settings) as handle,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{handle.http_port}",
            headers=await auth_headers(database_url, Role.OPERATOR),
        ) as http,
    ):
        assert (await http.get("/meters")).status_code == 200
        name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
        # Kill every connection of the gateway to its database: the pool's idle connections are
        # now dead, and a request that picks one fails inside the handler.
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        broken = await http.get("/meters")  # on a connection that died while idle
        assert_error_shape(broken, 503, "unavailable")
        assert "retry-after" in broken.headers
        # The pool replaces dead connections by itself; the API recovers without a restart.
        assert await wait_for_value(lambda: _status(http, "/meters"), 200, timeout=20) == 200


async def _status(http: httpx.AsyncClient, path: str) -> int:
    response = await http.get(path)
    assert response.status_code in (200, 503), response.text
    return response.status_code
