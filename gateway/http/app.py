"""FastAPI application: health, readiness and metrics; other routers mount here.

The app owns no resources. The service builds the pool, the MQTT intake and the pipeline in its
lifespan and hands them in as :class:`Services`; handlers get them through ``Depends``, and tests
substitute their own.
"""

from __future__ import annotations

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.errors import GatewayError, NotFoundError
from gateway.http.deps import Services, ServicesDep
from gateway.http.meters import router as meters_router

__all__ = ["Services", "create_app"]


async def _database_ok(pool: AsyncConnectionPool) -> str | None:
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.Error, PoolTimeout) as exc:
        return f"database: {type(exc).__name__}"
    return None


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="Meter gateway",
        summary="Smart-meter telemetry and STS prepaid token gateway",
        version="0.1.0",
    )
    app.state.services = services

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        """The one place where domain errors become HTTP responses."""
        del request
        status = 404 if isinstance(exc, NotFoundError) else 503
        return JSONResponse(
            status_code=status,
            content={"error": {"code": type(exc).__name__, "message": str(exc)}},
        )

    app.include_router(meters_router)

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
        elif not svc.mqtt.subscribed.is_set():
            problems.append("mqtt: subscriptions not granted")
        if not svc.pipeline.healthy:
            problems.append("ingest: last batch write failed")
        body = {"status": "ready" if not problems else "not ready", "problems": problems}
        return JSONResponse(status_code=200 if not problems else 503, content=body)

    @app.get("/metrics", tags=["operations"])
    async def metrics(svc: ServicesDep) -> Response:
        """Prometheus text exposition."""
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
