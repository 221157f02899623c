"""The corrections report: billed estimates that a later actual read superseded.

For each superseded estimate at boundary B the report has one row per affected period that has
ended: the period closing at B and the period opening at B. Each row gives the consumption as
billed with the estimate, the consumption with the read that replaced it (the other boundary
of the period as billing sees it now), and the difference billing must adjust.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from psycopg import AsyncConnection

from gateway.billing.core import BillingPolicy, advance, to_decimal
from gateway.billing.formats import CORRECTION_SCHEMA, CorrectionRow, FileFormat, encoder
from gateway.billing.period import Period
from gateway.billing.store import boundary_read, period_bounds

__all__ = ["correction_bytes", "correction_rows"]

_BATCH: Final = 500


def _consumption(start: float | None, end: float | None, margin: float) -> float | None:
    if start is None or end is None:
        return None
    return advance(start, end, margin)


def _read(value: float) -> Decimal:
    rounded = to_decimal(value)
    assert rounded is not None
    return rounded


def _rounded_difference(actual: float | None, estimated: float | None) -> Decimal | None:
    """Actual minus estimated, from the rounded figures shown beside it."""
    a, e = to_decimal(actual), to_decimal(estimated)
    return None if a is None or e is None else a - e


async def correction_rows(
    conn: AsyncConnection[Any],
    *,
    period: Period | None = None,
    since: datetime | None = None,
    now: datetime,
    policy: BillingPolicy | None = None,
) -> AsyncGenerator[list[CorrectionRow], None]:
    """Rows for estimates superseded since ``since`` and/or touching billing ``period``."""
    policy = policy or BillingPolicy()
    margin = policy.rollover_margin
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT e.meter_id, e.channel, e.boundary, e.value, e.method, e.actual_value,"
            " e.actual_method, e.superseded_at, m.time_zone FROM billing_estimates e"
            " JOIN meters m USING (meter_id) WHERE e.superseded_at IS NOT NULL"
            " AND e.superseded_at >= coalesce(%s, '-infinity'::timestamptz)"
            " ORDER BY e.meter_id, e.channel, e.boundary, e.superseded_at",
            (since,),
        )
        batch: list[CorrectionRow] = []
        for (
            meter_id,
            channel,
            at,
            estimated,
            method,
            actual,
            actual_method,
            when,
            tz,
        ) in await cur.fetchall():
            closed = Period.ending_at(at, tz)
            for role, billed in (("closing", closed), ("opening", closed.next())):
                if period is not None and billed != period:
                    continue
                opening, closing = await period_bounds(conn, billed, tz)
                if closing > now:
                    continue  # not billed yet: nothing to correct
                other_at = opening if role == "closing" else closing
                other = await boundary_read(
                    conn, meter_id, channel, other_at, policy, estimate=False
                )
                if role == "closing":
                    est = _consumption(other.value, estimated, margin)
                    act = _consumption(other.value, actual, margin)
                else:
                    est = _consumption(estimated, other.value, margin)
                    act = _consumption(actual, other.value, margin)
                batch.append(
                    CorrectionRow(
                        meter_id=meter_id,
                        register=channel,
                        period=str(billed),
                        boundary=role,
                        boundary_at=at,
                        estimate_method=method,
                        estimated_read=_read(estimated),
                        actual_read=_read(actual),
                        actual_method=actual_method,
                        estimated_consumption=to_decimal(est),
                        actual_consumption=to_decimal(act),
                        difference=_rounded_difference(act, est),
                        superseded_at=when,
                    )
                )
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
