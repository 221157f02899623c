"""The corrections report: adjustments to periods billed on an estimate later superseded.

An export that bills a period on an estimate at either boundary records what it billed
(``billing_estimated_bills``). Once such an estimate is superseded by an actual, interpolated
or accepted person's read, the report has one row for it: the period's consumption with the
estimate (as billed, or as corrected by an earlier row when the period's other boundary was
superseded first), the consumption with the read that replaced it, and the difference billing
adjusts by. The rows of a period add up to the whole correction, and a report of the rows
superseded ``since`` a time holds each adjustment once. Before it reads, the report supersedes
every estimate that usable points now cover, such as telemetry that arrived late.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from psycopg import AsyncConnection

from gateway.billing.core import BillingPolicy, period_consumption, to_decimal
from gateway.billing.formats import CORRECTION_SCHEMA, CorrectionRow, FileFormat, encoder
from gateway.billing.period import Period
from gateway.billing.store import supersede_covered

__all__ = ["correction_bytes", "correction_rows"]

_BATCH: Final = 500
_FAR_PAST: Final = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def _read(value: float) -> Decimal:
    rounded = to_decimal(value)
    assert rounded is not None
    return rounded


def _rounded_difference(actual: float | None, estimated: float | None) -> Decimal | None:
    """Actual minus estimated, from the rounded figures shown beside it."""
    a, e = to_decimal(actual), to_decimal(estimated)
    return None if a is None or e is None else a - e


@dataclass(slots=True)
class _Boundary:
    role: str
    at: datetime
    billed: float
    method: str | None
    """The estimate's method (``last_3_months`` …); None: this boundary was not estimated."""
    actual: float | None
    actual_method: str | None
    superseded_at: datetime | None


_BILLS: Final = (
    "SELECT b.meter_id, b.channel, b.period, m.register_max,"
    " b.opening_at, b.opening_read, eo.method, eo.actual_value, eo.actual_method,"
    " eo.superseded_at,"
    " b.closing_at, b.closing_read, ec.method, ec.actual_value, ec.actual_method,"
    " ec.superseded_at"
    " FROM billing_estimated_bills b JOIN meters m USING (meter_id)"
    " LEFT JOIN billing_estimates eo ON eo.id = b.opening_estimate"
    " LEFT JOIN billing_estimates ec ON ec.id = b.closing_estimate"
    " WHERE (eo.superseded_at IS NOT NULL OR ec.superseded_at IS NOT NULL)"
    " AND greatest(eo.superseded_at, ec.superseded_at) >= %(since)s"
    " AND (%(period)s::text IS NULL OR b.period = %(period)s)"
    " ORDER BY b.meter_id, b.channel, b.period"
)


def _adjustments(
    meter_id: str,
    channel: str,
    period: str,
    boundaries: list[_Boundary],
    *,
    policy: BillingPolicy,
    capacity: float | None,
) -> list[CorrectionRow]:
    """One row per superseded estimate of one billed period, in the order they were replaced."""
    reads = {b.role: b.billed for b in boundaries}

    def used() -> float | None:
        return period_consumption(
            reads["opening"], reads["closing"], (), policy, capacity=capacity
        ).consumption

    rows: list[CorrectionRow] = []
    replaced = sorted(
        (b for b in boundaries if b.superseded_at is not None),
        key=lambda b: (b.superseded_at, b.role != "opening"),
    )
    for b in replaced:
        assert b.actual is not None and b.method is not None and b.superseded_at is not None
        before = used()
        reads[b.role] = b.actual
        after = used()
        rows.append(
            CorrectionRow(
                meter_id=meter_id,
                register=channel,
                period=period,
                boundary=b.role,
                boundary_at=b.at,
                estimate_method=b.method,
                estimated_read=_read(b.billed),
                actual_read=_read(b.actual),
                actual_method=b.actual_method or "",
                estimated_consumption=to_decimal(before),
                actual_consumption=to_decimal(after),
                difference=_rounded_difference(after, before),
                superseded_at=b.superseded_at,
            )
        )
    return rows


async def correction_rows(
    conn: AsyncConnection[Any],
    *,
    period: Period | None = None,
    since: datetime | None = None,
    now: datetime,
    policy: BillingPolicy | None = None,
) -> AsyncGenerator[list[CorrectionRow], None]:
    """Rows for estimates superseded since ``since`` and/or of billed ``period``."""
    policy = policy or BillingPolicy()
    async with conn.transaction():
        await supersede_covered(conn, policy, now=now)
        cur = await conn.execute(
            _BILLS,
            {"since": since or _FAR_PAST, "period": None if period is None else str(period)},
        )
        batch: list[CorrectionRow] = []
        for row in await cur.fetchall():
            meter_id, channel, billed, capacity = row[:4]
            boundaries = [
                _Boundary(role, *row[start : start + 6])
                for role, start in (("opening", 4), ("closing", 10))
            ]
            adjustments = _adjustments(
                meter_id, channel, billed, boundaries, policy=policy, capacity=capacity
            )
            for correction in adjustments:
                if since is None or correction.superseded_at >= since:
                    batch.append(correction)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


async def correction_bytes(
    conn: AsyncConnection[Any],
    *,
    file_format: FileFormat,
    now: datetime,
    period: Period | None = None,
    since: datetime | None = None,
    policy: BillingPolicy | None = None,
) -> AsyncGenerator[bytes, None]:
    enc = encoder(CORRECTION_SCHEMA, file_format)
    rows = correction_rows(conn, period=period, since=since, now=now, policy=policy)
    async with aclosing(rows) as batches:
        async for batch in batches:
            if data := enc.encode(batch):
                yield data
    yield enc.finish()
