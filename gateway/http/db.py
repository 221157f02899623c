"""A database connection for one HTTP request, with a short wait and a clean 503.

Handlers take ``conn: DbConn`` instead of opening the pool themselves. The connection comes
from the service's pool; if none is free within the configured wait (``GATEWAY_HTTP_DB_WAIT_MS``)
or the database cannot be reached, the request is answered 503 with ``Retry-After`` rather than
queuing behind the ingest path or failing with a 500. The transaction commits when the handler
returns and rolls back when it raises, as with ``pool.connection()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from psycopg import AsyncConnection

from gateway.errors import ServiceUnavailableError
from gateway.http.deps import get_services

__all__ = ["DbConn", "db_connection"]

RETRY_AFTER_S = 2.0


async def db_connection(request: Request) -> AsyncIterator[AsyncConnection[Any]]:
    """Dependency: a pooled connection, waited for at most the configured time."""
    wait_s: float = request.app.state.db_wait_s
    pool = get_services(request).pool
    try:
        async with pool.connection(timeout=wait_s) as conn:
            yield conn
    except psycopg.OperationalError as exc:  # PoolTimeout included
        raise ServiceUnavailableError(
            "the database is busy or not reachable; try again shortly",
            retry_after_s=RETRY_AFTER_S,
        ) from exc


# "function" scope: commit (or roll back) before the response goes out, so a client never gets
# a 200 for a write that then failed to commit, nor reads ahead of its own write.
DbConn = Annotated[AsyncConnection[Any], Depends(db_connection, scope="function")]
