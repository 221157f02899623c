"""Database connections for file downloads: a fixed budget, apart from the API's pool.

A billing export streams for as long as the client reads, and holds one connection (and one
transaction) all that time. Downloads therefore take their connections from a small pool of
their own (``GATEWAY_HTTP_EXPORT_CONNECTIONS``, opened on first use), never from the pool the API
and the ingest path share: however many downloads run, the rest of the API keeps its
connections. A download that finds the budget spent is answered at once 503 with
``Retry-After``, before any byte of the file is sent.

Handlers take ``download: ExportDownload`` and stream with ``download.stream(chunks)``: the
connection is held until the response has been sent, and the file's generator is closed
before the connection goes back (a client that disconnects midway leaves no transaction open
on a pooled connection). A failure after the first byte cannot become an error reply any
more: it is logged and the response is cut off, so the client sees a transfer that did not
complete, and the file lacks its end (the CSV trailer, the Parquet footer).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Final

import psycopg
from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.errors import GatewayError, ServiceUnavailableError

__all__ = [
    "BUSY_RETRY_AFTER_S",
    "ExportConnections",
    "ExportDownload",
    "ExportSession",
    "export_pool",
]

log = logging.getLogger(__name__)

BUSY_RETRY_AFTER_S: Final = 30.0
"""Retry-After of a download refused because the budget is spent (downloads take minutes)."""
_UNREACHABLE_RETRY_AFTER_S: Final = 2.0
APPLICATION_NAME: Final = "gateway-export"
"""``application_name`` of the download connections (seen in ``pg_stat_activity``)."""


def export_pool(conninfo: str, slots: int) -> AsyncConnectionPool[Any]:
    """The downloads' own pool (not yet open): at most ``slots`` connections, none opened
    before the first download."""
    return AsyncConnectionPool(
        conninfo,
        min_size=0,
        max_size=slots,
        kwargs={"application_name": APPLICATION_NAME},
        open=False,
        name="gateway-export",
    )


class ExportConnections:
    """At most ``slots`` downloads at once, each on a connection of ``pool``.

    ``pool`` is the downloads' own (:func:`export_pool`) in the service; an application built
    without one spends the budget on its only pool instead.
    """

    def __init__(self, pool: AsyncConnectionPool[Any], *, slots: int, wait_s: float) -> None:
        if slots < 1:
            raise ValueError("a download budget needs at least one slot")
        self.pool = pool
        self.slots = slots
        self.wait_s = wait_s
        self._in_use = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection for one download, or :class:`ServiceUnavailableError` at once."""
        if self._in_use >= self.slots:
            raise ServiceUnavailableError(
                f"all {self.slots} download slots are in use; try again later",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        self._in_use += 1
        try:
            async with self._connect() as conn:
                yield conn
        finally:
            self._in_use -= 1

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection[Any]]:
        connected = False
        try:
            async with self.pool.connection(timeout=self.wait_s) as conn:
                connected = True
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if connected:
                raise
            raise ServiceUnavailableError(
                "the database is busy or not reachable; try again shortly",
                retry_after_s=_UNREACHABLE_RETRY_AFTER_S,
            ) from exc


class ExportSession:
    """One download's connection and the stream of the file it produces."""

    def __init__(self, conn: AsyncConnection[Any], what: str) -> None:
        self.conn = conn
        self.what = what
        self._streams: list[AsyncGenerator[bytes, None]] = []

    def stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` as a response body: a failure is logged, then ends the response."""
        body = self._guarded(chunks)
        self._streams.append(body)
        return body

    async def _guarded(self, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        sent = 0
        try:
            async for chunk in chunks:
                sent += len(chunk)
                yield chunk
        except (psycopg.Error, GatewayError) as exc:
            # The status line went out with the first byte: the only honest signal left is a
            # response that does not complete (and a file without its end).
            log.error(
                "%s failed after %d bytes (%s); the download is cut off",
                self.what,
                sent,
                type(exc).__name__,
            )
            raise
        finally:
            # ``async for`` leaves a generator it stopped reading suspended: close it here, so
            # that an unfinished export rolls back now, on this connection.
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    async def close(self) -> None:
        """Close the file's streams and roll back whatever they left open.

        A download that ended early (the client left) leaves the export's generator suspended
        inside its transaction: closed here, it rolls back at once, on this connection, and
        the connection goes back to the pool clean.
        """
        for body in self._streams:
            await body.aclose()
        if self.conn.info.transaction_status != TransactionStatus.IDLE and not self.conn.closed:
            await self.conn.rollback()


async def export_session(request: Request) -> AsyncIterator[ExportSession]:
    """Dependency: a download slot and its connection, held until the response is sent."""
    exports: ExportConnections = request.app.state.exports
    async with exports.connection() as conn:
        session = ExportSession(conn, f"{request.method} {request.url.path}")
        try:
            yield session
        finally:
            await session.close()


# "request" scope: the dependency ends after the streamed response has been sent, not before.
ExportDownload = Annotated[ExportSession, Depends(export_session, scope="request")]
