"""The HTTP API's one error shape, and the one table from the error tree to HTTP statuses.

Every response with a 4xx or 5xx status has the body::

    {"error": {"code": "not_found", "message": "meter 'X' is not registered",
               "fields": [{"field": "body.time_zone", "message": "unknown time zone"}]}}

``fields`` is present only for request validation problems. Messages name the rule that was
broken, never the offending value: a reply must not echo large, binary or secret input (a lone
surrogate echoed back cannot even be encoded).

Business code raises :mod:`gateway.errors` classes and never ``HTTPException``;
:func:`install_error_handlers` maps them with :data:`ERROR_STATUS`. The most specific class
in the table wins, so a new error that subclasses ``ConflictError`` is a 409 with no change
here; a new family adds one line. psycopg's connection errors (a pool timeout included) are a
503 with ``Retry-After`` wherever a handler met them: a database outage is not a bug.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    StorageUnavailableError,
    ValidationError,
)

__all__ = [
    "ERROR_STATUS",
    "ErrorReply",
    "ErrorStatus",
    "error_response",
    "install_error_handlers",
    "safe_text",
    "status_for",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS: Final = 200
"""Longest message (or field reason) a reply carries; longer text is cut."""
MAX_FIELDS: Final = 20
"""Most field problems listed in one reply."""
DATABASE_RETRY_AFTER_S: Final = 2


class _FieldOut(BaseModel):
    field: str
    message: str


class _ErrorOut(BaseModel):
    code: str
    message: str
    fields: list[_FieldOut] | None = None


class ErrorReply(BaseModel):
    """The body of every error reply (documented in the OpenAPI schema under this name)."""

    error: _ErrorOut


@dataclass(frozen=True, slots=True)
class ErrorStatus:
    """How one family of errors is answered over HTTP."""

    status: int
    code: str


ERROR_STATUS: Final[dict[type[Exception], ErrorStatus]] = {
    NotFoundError: ErrorStatus(404, "not_found"),
    ValidationError: ErrorStatus(422, "invalid_request"),
    ConflictError: ErrorStatus(409, "conflict"),
    AuthError: ErrorStatus(401, "unauthorized"),
    ForbiddenError: ErrorStatus(403, "forbidden"),
    RateLimitedError: ErrorStatus(429, "rate_limited"),
    PayloadTooLargeError: ErrorStatus(413, "payload_too_large"),
    ServiceUnavailableError: ErrorStatus(503, "unavailable"),
    # Any other gateway error reaching a handler is a backing service failing (StorageError …).
    GatewayError: ErrorStatus(503, "unavailable"),
}
"""Error class → status and code. Looked up along the exception's MRO: most specific wins."""

_HTTP_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}
_INTERNAL: Final = ErrorStatus(500, "internal_error")


def safe_text(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters and made encodable (lone surrogates replaced)."""
    value = str(text)
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.encode("utf-8", "replace").decode("utf-8")


def status_for(exc: BaseException) -> ErrorStatus:
    """The table entry of the most specific class of ``exc`` (500 when none matches)."""
    for cls in type(exc).__mro__:
        found = ERROR_STATUS.get(cls)
        if found is not None:
            return found
    return _INTERNAL


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    fields: Sequence[FieldProblem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A response in the API's error shape."""
    body: dict[str, Any] = {"code": code, "message": safe_text(message)}
    if fields is not None:
        body["fields"] = [
            {"field": safe_text(p.field), "message": safe_text(p.message)}
            for p in fields[:MAX_FIELDS]
        ]
    return JSONResponse(status_code=status, content={"error": body}, headers=headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _location(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_fields(exc: RequestValidationError) -> list[FieldProblem]:
    # Only location and message: pydantic's ``input`` and ``ctx`` would echo the request.
    return [
        FieldProblem(
            _location(err.get("loc", ())),
            str(err.get("msg", "invalid")).removeprefix("Value error, "),
        )
        for err in exc.errors()
    ]


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    del request
    entry = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitedError | ServiceUnavailableError):
        headers.update(_retry_after(exc.retry_after_s))
    elif isinstance(exc, StorageUnavailableError):  # the same operation may succeed later
        headers.update(_retry_after(DATABASE_RETRY_AFTER_S))
    elif isinstance(exc, AuthError):
        headers["WWW-Authenticate"] = "Bearer"
    if entry.status >= 500:
        log.warning("request failed: %s: %s", type(exc).__name__, safe_text(exc))
    fields = exc.fields if isinstance(exc, ValidationError) and exc.fields else None
    return error_response(entry.status, entry.code, str(exc), fields=fields, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    del request
    assert isinstance(exc, RequestValidationError)
    problems = _validation_fields(exc)
    message = "the request is invalid"
    if problems:
        message = f"the request is invalid: {problems[0].field}: {problems[0].message}"
    return error_response(422, "invalid_request", message, fields=problems)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    del request
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "error")
    headers = dict(exc.headers or {})
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    del request
    # A pool timeout (PoolTimeout is an OperationalError) or a lost connection: transient.
    log.warning("request failed on the database: %s", type(exc).__name__)
    return error_response(
        503,
        "unavailable",
        "the database is not available; try again later",
        headers=_retry_after(DATABASE_RETRY_AFTER_S),
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # A defect. Logged with its traceback (no request body, which may hold secrets).
    log.error(
        "unhandled %s on %s %s",
        type(exc).__name__,
        request.method,
        request.url.path[:200],
        exc_info=exc,
    )
    return error_response(500, "internal_error", "internal error")


def _document_errors(app: FastAPI) -> None:
    """Make the OpenAPI schema say what 422 replies really look like (FastAPI's default is its
    own ``{"detail": [...]}``, which this API never sends)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        reply = ErrorReply.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(reply.pop("$defs", {}))
        components["ErrorReply"] = reply
        ref = {"$ref": "#/components/schemas/ErrorReply"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                invalid = operation.get("responses", {}).get("422")
                if invalid is not None:
                    invalid["content"] = {"application/json": {"schema": ref}}
        for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, now unreferenced
            if f'"#/components/schemas/{name}"' not in json.dumps(schema):
                components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Route every error an endpoint can raise to the one shape above."""
    _document_errors(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for cls in ERROR_STATUS:
        app.add_exception_handler(cls, _gateway_error)
    app.add_exception_handler(psycopg.OperationalError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
