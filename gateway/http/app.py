"""FastAPI application: health, readiness and metrics; other routers mount here.

The app owns no resources. The service builds the pool, the MQTT intake and the pipeline in its
lifespan and hands them in as :class:`Services`; handlers get them through ``Depends``, and tests
substitute their own. Errors of every route are answered in one shape by
:mod:`gateway.http.errors`; request bodies are capped by :mod:`gateway.http.limits`, and
handlers get database connections with a short wait from :mod:`gateway.http.db`. Access
control (:class:`AccessControl`) is handed in the same way as the services.

Every endpoint but ``/healthz``, ``/readyz`` (and ``/metrics`` when open by setting) requires a
principal with a role (:func:`gateway.http.security.require`).
"""

from __future__ import annotations

import psycopg
from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.billing.settings import load_policy
from gateway.http.admin import router as admin_router
from gateway.http.alerts import router as alerts_router
from gateway.http.auth_routes import router as auth_router
from gateway.http.billing import router as billing_router
from gateway.http.commands import router as commands_router
from gateway.http.control import router as control_router
from gateway.http.custody import Custody
from gateway.http.deps import Services, ServicesDep
from gateway.http.errors import install_error_handlers
from gateway.http.limits import BodyLimit
from gateway.http.meters import router as meters_router
from gateway.http.security import AccessControl, Role, install_audit, require
from gateway.http.vending_admin import install_vending
from gateway.vending.keys import NoDecoderKeys
from gateway.vending.service import VendingService
from gateway.web import install_web

__all__ = [
    "DEFAULT_DB_WAIT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "AccessControl",
    "Custody",
    "Services",
    "create_app",
]

DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_DB_WAIT_S = 1.0


async def _database_ok(pool: AsyncConnectionPool) -> str | None:
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.Error, PoolTimeout) as exc:
        return f"database: {type(exc).__name__}"
    return None


def create_app(
    services: Services,
    access: AccessControl,
    custody: Custody | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    db_wait_s: float = DEFAULT_DB_WAIT_S,
    vending: VendingService | None = None,
) -> FastAPI:
    """The API over ``services``, guarded by ``access``; bodies over ``max_body_bytes`` get 413,
    and a request that waits more than ``db_wait_s`` for a database connection gets 503."""
    app = FastAPI(
        title="Meter gateway",
        summary="Smart-meter telemetry and STS prepaid token gateway",
        version="0.1.0",
    )
    app.state.services = services
    app.state.db_wait_s = db_wait_s
    app.state.access = access
    app.state.custody = custody or Custody()
    install_error_handlers(app)
    install_audit(app, access)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    app.include_router(meters_router)
    app.include_router(auth_router)
    app.include_router(admin_router)
    install_vending(app, vending or VendingService(services.pool, NoDecoderKeys()))
    app.include_router(alerts_router)
    app.include_router(billing_router)
    app.include_router(control_router)
    app.include_router(commands_router)
    app.state.billing_policy = load_policy()
    install_web(app)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process and its event loop are answering."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(svc: ServicesDep) -> JSONResponse:
        """Readiness: the database answers, the broker session is up, batches are committing."""
        problems = []
        if (db := await _database_ok(svc.pool)) is not None:
            problems.append(db)
        if not svc.mqtt.connected.is_set():
            problems.append("mqtt: not connected")
        elif svc.ingesting and not svc.mqtt.subscribed.is_set():
            problems.append("mqtt: subscriptions not granted")
        if not svc.pipeline.healthy:
            problems.append("ingest: last batch write failed")
        body = {"status": "ready" if not problems else "not ready", "problems": problems}
        return JSONResponse(status_code=200 if not problems else 503, content=body)

    metrics_guard = [] if access.metrics_open else [Depends(require(Role.TECHNICIAN))]

    @app.get("/metrics", tags=["operations"], dependencies=metrics_guard)
    async def metrics(svc: ServicesDep) -> Response:
        """Prometheus text exposition."""
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
