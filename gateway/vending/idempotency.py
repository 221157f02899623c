"""Idempotent vending transactions: one ``request_id``, one outcome, the same bytes on retry.

Each money-moving request runs in **one** database transaction that starts by inserting its
idempotency record ``(vendor, request_id)``; the sale, its tokens, the TIDs, the float movement,
the arrears, the audit record and the stored response bytes commit together (the work returns
an :class:`Outcome`; this module writes its audit record and response). So:

* a retry of a completed request finds the record and gets the stored bytes back;
* a retry of a request still in flight waits on the record's unique key until the first
  transaction ends (then gets its bytes), or gives up after ``retry_wait`` with ``in_progress``;
  a retry reaching the same process waits in the process instead, without taking a pooled
  connection (a burst of retries must not starve other requests of connections); such
  retries go on one at a time (each replay takes a millisecond or two), so the wait for the
  record can add up to ``retry_wait`` in the process and ``retry_wait`` on the record;
* a request waits ``db_wait`` at most for a pooled connection, then gets
  ``vending_unavailable`` (503 with ``Retry-After``);
* once its record is in, a request waits for the meter and float rows up to ``lock_wait``
  (a sale of the same meter or vendor ahead of it), never answering ``in_progress`` for that;
* a crash before the commit leaves nothing, one after it leaves the whole sale and its reply;
* a refusal rolls everything back (nothing is stored: a retry is judged afresh).

The transaction runs in psycopg's pipeline mode: statements go out as they are issued and the
client waits only where it reads a result. BEGIN travels with the idempotency record, and the
writes a sale leaves unread travel with the COMMIT; a deadlock, a serialisation failure or a
lost race on a unique key (the free units of a month) surfaces at the latest there, and the
whole transaction is run again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway import audit
from gateway.vending.config import VendingConfig
from gateway.vending.errors import (
    InProgressError,
    RequestIdReusedError,
    VendingBusyError,
    VendingError,
    VendingUnavailableError,
)

__all__ = ["Idempotency", "Outcome", "VendRequest", "Work", "connection", "fingerprint"]

log = logging.getLogger(__name__)

_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a request's work did: its response, and its audit record's outcome and detail."""

    body: bytes
    outcome: str
    detail: Mapping[str, Any] | None = None


Work = Callable[[AsyncConnection[Any]], Awaitable[Outcome]]
"""A request's work inside its transaction (refusals raise)."""


@dataclass(frozen=True, slots=True)
class VendRequest:
    """A vendor's request as the audit log names it."""

    vendor: str
    request_id: str | None
    action: str
    """``vend.credit``, ``vend.free_issue``, ``vend.reprint``, ``vend.reverse``, …"""
    object: str
    """What it concerns: ``meter:…`` or ``receipt:…``."""
    origin: audit.Origin = field(default_factory=audit.Origin)

    def audit_values(
        self, outcome: str, detail: Mapping[str, Any] | None = None
    ) -> tuple[Any, ...]:
        """The parameters of this request's audit record (:data:`gateway.audit.INSERT`)."""
        extra = self.origin.http_request_id
        return audit.values(
            actor=self.vendor,
            action=self.action,
            object=self.object,
            outcome=outcome,
            source=self.origin.address or "vending",
            request_id=self.request_id,
            detail={**(detail or {}), **({} if extra is None else {"http_request_id": extra})},
        )

    async def record(
        self,
        conn: AsyncConnection[Any],
        outcome: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append this request's audit record in ``conn``'s transaction."""
        await conn.execute(audit.INSERT, self.audit_values(outcome, detail))


def fingerprint(operation: str, fields: dict[str, Any]) -> bytes:
    """What a ``request_id`` was used for: a retry with another body is refused."""
    return hashlib.sha256(
        orjson.dumps({"operation": operation, **fields}, option=orjson.OPT_SORT_KEYS)
    ).digest()


@asynccontextmanager
async def connection(
    pool: AsyncConnectionPool[Any], config: VendingConfig
) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled connection, waited for ``config.db_wait`` at most (then
    :class:`VendingUnavailableError`); back to the pool on exit, rolled back if still in a
    transaction. Unlike ``pool.connection()`` nothing is committed on exit: callers work in
    ``conn.transaction()``."""
    try:
        conn = await pool.getconn(timeout=config.db_wait.total_seconds())
    except PoolTimeout as exc:
        raise VendingBusyError(
            "the vending service is busy right now; retry the request shortly"
        ) from exc
    try:
        yield conn
    finally:
        await pool.putconn(conn)


class _Turn:
    """One request id's queue in this process: its lock and how many requests use it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Idempotency:
    """Runs requests' work at most once per (vendor, request_id), on a connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], config: VendingConfig) -> None:
        self._pool = pool
        self._config = config
        self._turns: dict[tuple[str, str], _Turn] = {}

    @asynccontextmanager
    async def _turn(self, vendor: str, request_id: str) -> AsyncIterator[None]:
        """Wait (``retry_wait`` at most, then ``in_progress``) until no other request of this
        process with the same vendor and request id is running."""
        key = (vendor, request_id)
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        turn.users += 1
        try:
            try:
                async with asyncio.timeout(self._config.retry_wait.total_seconds()):
                    await turn.lock.acquire()
            except TimeoutError:
                raise InProgressError(
                    f"request {request_id!r} is still being processed; retry it shortly"
                ) from None
            try:
                yield
            finally:
                turn.lock.release()
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[key]

    async def run(
        self, request: VendRequest, operation: str, fields: dict[str, Any], work: Work
    ) -> bytes:
        """The response of ``request``: stored, or made by ``work`` and stored with it."""
        assert request.request_id is not None
        async with self._turn(request.vendor, request.request_id):
            return await self._run(request, request.request_id, operation, fields, work)

    async def _run(
        self,
        request: VendRequest,
        request_id: str,
        operation: str,
        fields: dict[str, Any],
        work: Work,
    ) -> bytes:
        digest = fingerprint(operation, fields)
        for attempt in range(_ATTEMPTS):
            try:
                return await self._attempt(request, request_id, operation, digest, work)
            except (psycopg.errors.TransactionRollback, psycopg.errors.UniqueViolation) as exc:
                # A deadlock, a serialisation failure or a lost race on a unique key rolled
                # the whole transaction back: running it again is safe and decides afresh.
                if attempt == _ATTEMPTS - 1:
                    raise VendingUnavailableError(
                        "the vending database is busy right now; retry the request shortly"
                    ) from exc
                log.info("vending transaction retried after %s", type(exc).__name__)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        request: VendRequest,
        request_id: str,
        operation: str,
        digest: bytes,
        work: Work,
    ) -> bytes:
        wait_ms = int(self._config.retry_wait.total_seconds() * 1000)
        lock_wait_ms = max(1, int(self._config.lock_wait.total_seconds() * 1000))
        vendor = request.vendor
        recorded = False
        try:
            async with (
                connection(self._pool, self._config) as conn,
                conn.pipeline(),
                conn.transaction(),
            ):
                # Only the wait for the idempotency record (the same request still in flight)
                # is bounded by retry_wait; once the record is in, the request is this one's
                # and waits for the meter and float rows as long as lock_wait allows. Both
                # bounds are set (as SET LOCAL would) by the insert itself, to spare two
                # statements: the first before it looks for a conflict, the second as it
                # returns its row, which it does only when the record is new. BEGIN travels
                # with it.
                cur = await conn.execute(
                    "INSERT INTO vend_requests (vendor, request_id, operation, body_hash,"
                    " status, response) SELECT %s, %s, %s, %s, 0, ''"
                    " WHERE set_config('lock_timeout', %s, true) IS NOT NULL"
                    " ON CONFLICT DO NOTHING RETURNING set_config('lock_timeout', %s, true)",
                    (vendor, request_id, operation, digest, f"{wait_ms}ms", f"{lock_wait_ms}ms"),
                )
                fresh = await cur.fetchone() is not None
                recorded = True
                if not fresh:
                    cur = await conn.execute(
                        "SELECT body_hash, response FROM vend_requests"
                        " WHERE vendor = %s AND request_id = %s",
                        (vendor, request_id),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    if bytes(row[0]) != digest:
                        raise RequestIdReusedError(
                            f"request_id {request_id!r} was already used for a different request"
                        )
                    await request.record(conn, "replayed")
                    return bytes(row[1])
                done = await work(conn)
                # The audit record and the response, in one statement that goes out with what
                # the work left unread, and the COMMIT.
                await conn.execute(
                    f"WITH audit AS ({audit.INSERT}) UPDATE vend_requests SET status = 200,"
                    " response = %s WHERE vendor = %s AND request_id = %s",
                    (
                        *request.audit_values(done.outcome, done.detail),
                        done.body,
                        vendor,
                        request_id,
                    ),
                )
                return done.body
        except psycopg.errors.LockNotAvailable as exc:
            if recorded:
                raise VendingUnavailableError(
                    "the vending database is busy right now; retry the request shortly"
                ) from exc
            raise InProgressError(
                f"request {request_id!r} is still being processed; retry it shortly"
            ) from exc
        except (psycopg.errors.TransactionRollback, psycopg.errors.UniqueViolation):
            raise
        except psycopg.OperationalError as exc:
            log.warning("vending database unavailable: %s", type(exc).__name__)
            raise VendingUnavailableError(
                "the vending database cannot be reached right now; retry the request shortly"
            ) from exc

    async def record_refusal(self, request: VendRequest, error: VendingError) -> None:
        """Audit a refused request (its own transaction had rolled back)."""
        try:
            async with (
                connection(self._pool, self._config) as conn,
                conn.pipeline(),
                conn.transaction(),
            ):
                await request.record(conn, error.code, {"message": error.message})
        except (psycopg.Error, VendingBusyError):
            log.warning(
                "could not audit a refused %s", request.action, extra={"vendor": request.vendor}
            )
