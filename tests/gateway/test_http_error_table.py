"""The error table of gateway.http.errors: each family's status, code and headers, inherited
by subclasses, on a bare FastAPI app (no database needed)."""

from __future__ import annotations

import json

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg_pool import PoolTimeout

from gateway.errors import (
    AuthError,
    ConflictError,
    FieldProblem,
    ForbiddenError,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServiceUnavailableError,
    StorageError,
    ValidationError,
)
from gateway.http.errors import install_error_handlers


class DuplicateVendError(ConflictError):
    """A feature's own error: inherits 409 without touching the table."""


ERRORS: dict[str, Exception] = {
    "not-found": NotFoundError("meter 'X' is not registered"),
    "invalid": ValidationError(
        "the amount is invalid", [FieldProblem("body.amount", "must be positive")]
    ),
    "conflict": DuplicateVendError("this purchase id was used for another request"),
    "auth": AuthError("credentials are missing"),
    "forbidden": ForbiddenError("operators only"),
    "rate": RateLimitedError("slow down", retry_after_s=2.5),
    "large": PayloadTooLargeError("too big"),
    "unavailable": ServiceUnavailableError("busy", retry_after_s=7),
    "storage": StorageError("disk full"),
    "gateway": GatewayError("something upstream"),
    "pool": PoolTimeout("couldn't get a connection after 1.00 sec"),
    "lost": psycopg.OperationalError("server closed the connection unexpectedly"),
    "bug": ZeroDivisionError("division by zero"),
    "long": NotFoundError("meter \ud800 " + "x" * 10_000),
}


@pytest.fixture
def client() -> httpx.AsyncClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{name}")
    async def _raise(name: str) -> None:
        raise ERRORS[name]

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.parametrize(
    ("name", "status", "code", "headers"),
    [
        ("not-found", 404, "not_found", {}),
        ("invalid", 422, "invalid_request", {}),
        ("conflict", 409, "conflict", {}),
        ("auth", 401, "unauthorized", {"www-authenticate": "Bearer"}),
        ("forbidden", 403, "forbidden", {}),
        ("rate", 429, "rate_limited", {"retry-after": "3"}),
        ("large", 413, "payload_too_large", {}),
        ("unavailable", 503, "unavailable", {"retry-after": "7"}),
        ("storage", 503, "unavailable", {}),
        ("gateway", 503, "unavailable", {}),
        ("pool", 503, "unavailable", {"retry-after": "2"}),
        ("lost", 503, "unavailable", {"retry-after": "2"}),
        ("bug", 500, "internal_error", {}),
    ],
)
async def test_each_error_family_has_its_status_code_and_headers(
    client: httpx.AsyncClient, name: str, status: int, code: str, headers: dict[str, str]
) -> None:
    response = await client.get(f"/raise/{name}")
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    for header, value in headers.items():
        assert response.headers[header] == value
    if name == "invalid":
        assert error["fields"] == [{"field": "body.amount", "message": "must be positive"}]
    else:
        assert "fields" not in error
    if name in ("bug", "pool", "lost"):
        # Library and defect messages are not passed through to the client.
        assert "division" not in error["message"] and "sec" not in error["message"]


async def test_messages_are_cut_and_made_encodable(client: httpx.AsyncClient) -> None:
    response = await client.get("/raise/long")
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert len(message) <= 200 and message.endswith("…")
    assert message.startswith("meter ? x")


def test_openapi_documents_the_error_reply_for_invalid_requests() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/items/{item_id}")
    async def _item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    schema = app.openapi()
    invalid = schema["paths"]["/items/{item_id}"]["get"]["responses"]["422"]
    assert invalid["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorReply"
    }
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert set(components["ErrorReply"]["properties"]) == {"error"}
    assert "$defs" not in json.dumps(schema)
    assert app.openapi() is schema
