"""The field technician's web pages and the JSON they read, served by the gateway's own app.

:func:`install_web` adds the JSON endpoints (:mod:`gateway.web.api`), the pages under
``/field/`` (:mod:`gateway.web.pages`), their static assets, and ``Idempotency-Key`` handling
for every state-changing request (:mod:`gateway.web.idempotency`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool

from gateway.http.deps import get_services
from gateway.web.api import router as api_router
from gateway.web.idempotency import install_idempotency
from gateway.web.pages import STATIC_DIR
from gateway.web.pages import router as pages_router
from gateway.web.queries import SchemaVariant

__all__ = ["install_web"]


def _pool(request: Request) -> AsyncConnectionPool[Any]:
    return get_services(request).pool


def install_web(app: FastAPI) -> None:
    app.state.schema_variant = SchemaVariant()
    app.include_router(api_router)
    app.include_router(pages_router)
    app.mount("/field/static", StaticFiles(directory=STATIC_DIR), name="field-static")
    install_idempotency(app, _pool)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/field/", status_code=307)
