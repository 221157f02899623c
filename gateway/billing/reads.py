"""Person's reads (meter reader, technician, customer): validate, store, review.

Every read is checked against the meter's usable history before it is used (core
``validate_read``); a rejected read is stored with its reason, is not used for billing and
appears on the review list until an operator decides on it. An accepted read becomes a usable
point of the billing export and supersedes any estimate it now covers. One read is one
transaction, serialised per meter register, and audited.

Reads are kept in ``billing_reads`` rather than in ``reading_data``: telemetry stays what the
meters themselves sent (the detection rules run on it), and the read keeps its source, reader,
photo and validation outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from psycopg import AsyncConnection
from psycopg.rows import class_row

from gateway import audit
from gateway.billing.core import CLOCK_SKEW, BillingPolicy, ReadSource, validate_read
from gateway.billing.errors import ReadConflictError
from gateway.billing.store import MAIN_REGISTER, REGISTERS, covering_estimates, point
from gateway.errors import NotFoundError

__all__ = ["ReadSubmission", "StoredRead", "decide_review", "review_list", "submit_read"]

_COLUMNS: Final = (
    "id, meter_id, channel, ts, value, source, reader, photo_ref, status, reason, detail,"
    " origin, received_at, reviewed_by, reviewed_at"
)


@dataclass(frozen=True, slots=True)
class ReadSubmission:
    """A read as given; a naive ``ts`` is local time in the meter's zone."""

    meter_id: str
    ts: datetime
    value: float
    source: ReadSource
    channel: str | None = None
    reader: str | None = None
    photo_ref: str | None = None
    origin: str = "api"


@dataclass(frozen=True, slots=True)
class StoredRead:
    id: int
    meter_id: str
    channel: str
    ts: datetime
    value: float
    source: str
    reader: str | None
    photo_ref: str | None
    status: str
    reason: str | None
    detail: str | None
    origin: str
    received_at: datetime
    reviewed_by: str | None
    reviewed_at: datetime | None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    read: StoredRead
    created: bool


async def _meter(
    conn: AsyncConnection[Any], meter_id: str
) -> tuple[str, str, float | None, float | None]:
    """The meter's utility, zone, plausibility limit (per day) and register capacity."""
    cur = await conn.execute(
        "SELECT m.utility, m.time_zone, coalesce(sized.max_per_day, any_size.max_per_day),"
        " m.register_max"
        " FROM meters m LEFT JOIN billing_meter_sizes s USING (meter_id)"
        " LEFT JOIN billing_limits sized ON sized.utility = m.utility AND sized.size = s.size"
        " LEFT JOIN billing_limits any_size ON any_size.utility = m.utility"
        " AND any_size.size = '*' WHERE m.meter_id = %s",
        (meter_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"meter {meter_id!r} is not registered")
    return row[0], row[1], row[2], row[3]


async def _stored(
    conn: AsyncConnection[Any], meter_id: str, channel: str, ts: datetime, source: str
) -> StoredRead | None:
    async with conn.cursor(row_factory=class_row(StoredRead)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM billing_reads WHERE meter_id = %s AND channel = %s"
            " AND ts = %s AND source = %s",
            (meter_id, channel, ts, source),
        )
        return await cur.fetchone()


async def submit_read(
    conn: AsyncConnection[Any],
    sub: ReadSubmission,
    *,
    actor: str | None,
    policy: BillingPolicy | None = None,
    request_id: str | None = None,
) -> SubmitResult:
    """Validate and store one read; the same read again returns the stored one unchanged.

    Raises :class:`NotFoundError` for an unknown meter and :class:`ReadConflictError` when a
    read of the same meter register, instant and source is stored with another value.
    """
    policy = policy or BillingPolicy()
    async with conn.transaction():
        utility, time_zone, max_per_day, capacity = await _meter(conn, sub.meter_id)
        ts = sub.ts if sub.ts.tzinfo else sub.ts.replace(tzinfo=ZoneInfo(time_zone))
        channel = sub.channel or MAIN_REGISTER.get(utility, "")
        reason = detail = None
        if ts > datetime.now(UTC) + CLOCK_SKEW:
            reason, detail = "future_read", f"read time {ts.isoformat()} is in the future"
        elif utility not in REGISTERS:
            reason, detail = "meter_not_billable", f"meter utility is {utility!r}"
            channel = channel or "-"
        elif channel not in {name for name, _ in REGISTERS[utility]}:
            reason, detail = "unknown_register", f"{channel!r} is not a {utility} register"
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('billing_read'), hashtext(%s))",
            (f"{sub.meter_id}/{channel}",),
        )
        existing = await _stored(conn, sub.meter_id, channel, ts, sub.source.value)
        if existing is not None:
            if existing.value != sub.value:
                raise ReadConflictError(
                    f"a {sub.source.value} read of meter {sub.meter_id} register {channel} at"
                    f" {ts.isoformat()} is already stored with value {existing.value:g}"
                )
            return SubmitResult(existing, created=False)
        if reason is None:
            previous = await point(conn, sub.meter_id, channel, hi=ts, last=True)
            following = await point(conn, sub.meter_id, channel, lo=ts, last=False)
            verdict = validate_read(
                ts=ts,
                value=sub.value,
                previous=previous,
                following=following,
                max_per_day=max_per_day or float("inf"),
                margin=policy.rollover_margin,
                capacity=capacity,
                resolution=policy.rollback_resolution,
            )
            reason, detail = verdict.reason, verdict.detail
        status = "accepted" if reason is None else "rejected"
        async with conn.cursor(row_factory=class_row(StoredRead)) as cur:
            await cur.execute(
                "INSERT INTO billing_reads (meter_id, channel, ts, value, source, reader,"
                " photo_ref, status, reason, detail, origin)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (
                    sub.meter_id,
                    channel,
                    ts,
                    sub.value,
                    sub.source.value,
                    sub.reader,
                    sub.photo_ref,
                    status,
                    reason,
                    detail,
                    sub.origin,
                ),
            )
            stored = await cur.fetchone()
        assert stored is not None
        if status == "accepted":
            await covering_estimates(conn, sub.meter_id, channel, policy)
        await audit.record(
            conn,
            actor=actor,
            action="billing.read.submit",
            object=f"meter:{sub.meter_id}",
            outcome=status,
            source=sub.origin,
            request_id=request_id,
            detail={
                "read_id": stored.id,
                "register": channel,
                "ts": ts.isoformat(),
                "value": sub.value,
                "source": sub.source.value,
                "reason": reason,
            },
        )
        return SubmitResult(stored, created=True)


async def review_list(
    conn: AsyncConnection[Any], *, limit: int = 100, after: int | None = None
) -> list[StoredRead]:
    """Rejected reads nobody has decided on yet, oldest first (page with ``after`` = last id)."""
    async with conn.cursor(row_factory=class_row(StoredRead)) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM billing_reads WHERE status = 'rejected'"
            " AND reviewed_at IS NULL AND id > %s ORDER BY id LIMIT %s",
            (after or 0, limit),
        )
        return await cur.fetchall()


async def decide_review(
    conn: AsyncConnection[Any],
    read_id: int,
    *,
    accept: bool,
    actor: str,
    policy: BillingPolicy | None = None,
    request_id: str | None = None,
) -> StoredRead:
    """An operator's decision on a rejected read: accept it for billing, or confirm rejection."""
    policy = policy or BillingPolicy()
    async with conn.transaction():
        async with conn.cursor(row_factory=class_row(StoredRead)) as cur:
            await cur.execute(
                "UPDATE billing_reads SET reviewed_by = %s, reviewed_at = now(),"
                " status = CASE WHEN %s THEN 'accepted' ELSE status END,"
                " reason = CASE WHEN %s THEN NULL ELSE reason END"
                " WHERE id = %s AND status = 'rejected' AND reviewed_at IS NULL"
                f" RETURNING {_COLUMNS}",
                (actor, accept, accept, read_id),
            )
            decided = await cur.fetchone()
        if decided is None:
            raise NotFoundError(f"no read {read_id} waiting for review")
        if accept:
            await covering_estimates(conn, decided.meter_id, decided.channel, policy)
        await audit.record(
            conn,
            actor=actor,
            action="billing.read.review",
            object=f"meter:{decided.meter_id}",
            outcome="accepted" if accept else "rejected",
            request_id=request_id,
            detail={"read_id": read_id},
        )
        return decided
