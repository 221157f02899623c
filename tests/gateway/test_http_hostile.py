"""Hostile text and hostile JSON in request bodies and query strings: always a 4xx in the API's
error shape, never a 500 (NUL and lone surrogates cannot reach PostgreSQL, argon2 or a reply)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.auth.passwords import hash_password, verify_password
from gateway.http.security import Role
from gateway.service import GatewayHandle
from tests.gateway.test_http_errors import assert_error_shape
from tests.plugins.auth import AuthHeaders

JSON = {"content-type": "application/json"}


@pytest.fixture
async def client(gateway: GatewayHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as c:
        yield c


@pytest.mark.parametrize(
    "content",
    [
        '{"name": "a\\u0000", "password": "x"}',
        '{"name": "a\\ud800", "password": "x"}',
        '{"name": "x", "password": "\\ud800"}',
        '{"name": "x", "password": "a\\u0000"}',
        "[" * 100_000,
        '{"name": ' + "[" * 100_000,
    ],
    ids=["nul-name", "surrogate-name", "surrogate-password", "nul-password", "deep", "deep-name"],
)
async def test_hostile_login_body_is_a_4xx(client: httpx.AsyncClient, content: str) -> None:
    response = await client.post("/auth/login", content=content.encode(), headers=JSON)
    assert 400 <= response.status_code < 500, response.text
    assert_error_shape(response, response.status_code, response.json()["error"]["code"])


async def test_hostile_login_form_is_a_4xx(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/login", data={"name": "a\x00", "password": "x"})
    assert_error_shape(response, 422, "invalid_request")


@pytest.mark.parametrize("text", ["a\x00b", "a\ud800b"], ids=["nul", "surrogate"])
@pytest.mark.parametrize(
    ("role", "method", "path", "body"),
    [
        (Role.TECHNICIAN, "POST", "/alerts/1/acknowledge", {"note": "{}"}),
        (Role.TECHNICIAN, "POST", "/alerts/1/resolve", {"note": "{}"}),
        (
            Role.TECHNICIAN,
            "POST",
            "/meters/m1/reads",
            {"value": 1, "read_at": "2026-01-01T00:00:00Z", "source": "technician",
             "reader": "{}"},
        ),
        (
            Role.TECHNICIAN,
            "POST",
            "/meters/m1/reads",
            {"value": 1, "read_at": "2026-01-01T00:00:00Z", "source": "technician",
             "photo_ref": "{}"},
        ),
        (
            Role.ADMIN,
            "POST",
            "/admin/principals",
            {"name": "hostile-m", "role": "operator", "kind": "machine", "key_label": "{}"},
        ),
        (Role.ADMIN, "POST", "/admin/principals/nobody/keys", {"label": "{}"}),
    ],
    ids=["ack", "resolve", "reader", "photo_ref", "key_label", "label"],
)  # fmt: skip
async def test_unstorable_text_in_a_body_is_a_422(
    client: httpx.AsyncClient,
    database_url: str,
    auth_headers: AuthHeaders,
    role: Role,
    method: str,
    path: str,
    body: dict[str, Any],
    text: str,
) -> None:
    hostile = {k: text if v == "{}" else v for k, v in body.items()}
    content = json.dumps(hostile).encode()  # ensure_ascii: NUL and surrogates as \u escapes
    headers = {**JSON, **await auth_headers(database_url, role)}
    response = await client.request(method, path, content=content, headers=headers)
    error = assert_error_shape(response, 422, "invalid_request")
    assert error.get("fields"), error


@pytest.mark.parametrize("param", ["actor", "action", "outcome"])
async def test_nul_in_an_audit_filter_is_a_422(
    client: httpx.AsyncClient, database_url: str, auth_headers: AuthHeaders, param: str
) -> None:
    headers = await auth_headers(database_url, Role.ADMIN)
    response = await client.get(f"/admin/audit?{param}=a%00b", headers=headers)
    assert_error_shape(response, 422, "invalid_request")


async def test_nul_in_an_alert_cursor_is_a_4xx(
    client: httpx.AsyncClient, database_url: str, auth_headers: AuthHeaders
) -> None:
    headers = await auth_headers(database_url, Role.TECHNICIAN)
    response = await client.get("/alerts?cursor=a%00b", headers=headers)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize("stored", [None, "real"], ids=["unknown-account", "known-account"])
async def test_an_unencodable_password_is_a_failed_login(stored: str | None) -> None:
    stored_hash = await hash_password("correct horse battery") if stored else None
    assert await verify_password(stored_hash, "correct\ud800horse") is False
