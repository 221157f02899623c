"""The corrections report: adjustments to periods billed on an estimate later superseded.

An export that bills a period on an estimate at either boundary records what it billed
(``billing_estimated_bills``). Once such an estimate is superseded by an actual, interpolated
or accepted person's read, the report has one row for it: the period's consumption with the
estimate (as billed, or as corrected by an earlier row when the period's other boundary was
superseded first), the consumption with the read that replaced it, and the difference billing
adjusts by. The rows of a period add up to the whole correction, and a ``new`` report delivers
each adjustment once (``since`` only filters on when estimates were superseded). Before it
reads, the report supersedes every estimate that usable points now cover, such as telemetry
that arrived late.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from psycopg import AsyncConnection

from gateway import audit
from gateway.billing.core import BillingPolicy, SeriesFalls, consumption_between, to_decimal
from gateway.billing.formats import CORRECTION_SCHEMA, CorrectionRow, FileFormat, encoder
from gateway.billing.period import Period
from gateway.billing.store import supersede_covered

__all__ = ["correction_bytes", "correction_rows"]

_BATCH: Final = 500


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
    reported_at: datetime | None
    """When a ``new`` report delivered this boundary's row; None: not yet."""


_BILLS: Final = (
    "SELECT b.meter_id, b.channel, b.period, m.register_max, b.consumption,"
    " b.series_rollovers, b.series_rollbacks,"
    " b.opening_at, b.opening_read, eo.method, eo.actual_value, eo.actual_method,"
    " eo.superseded_at, b.opening_reported_at,"
    " b.closing_at, b.closing_read, ec.method, ec.actual_value, ec.actual_method,"
    " ec.superseded_at, b.closing_reported_at"
    " FROM billing_estimated_bills b JOIN meters m USING (meter_id)"
    " LEFT JOIN billing_estimates eo ON eo.id = b.opening_estimate"
    " LEFT JOIN billing_estimates ec ON ec.id = b.closing_estimate"
    " WHERE (eo.superseded_at IS NOT NULL OR ec.superseded_at IS NOT NULL)"
    " AND (%(since)s::timestamptz IS NULL"
    "      OR greatest(eo.superseded_at, ec.superseded_at) >= %(since)s)"
    " AND (%(period)s::text IS NULL OR b.period = %(period)s)"
    " AND (NOT %(new)s OR (eo.superseded_at IS NOT NULL AND b.opening_reported_at IS NULL)"
    "      OR (ec.superseded_at IS NOT NULL AND b.closing_reported_at IS NULL))"
    " ORDER BY b.meter_id, b.channel, b.period"
)
_BILLS_NEW: Final = _BILLS + " FOR UPDATE OF b"
_DELIVERED: Final = (
    "UPDATE billing_estimated_bills SET"
    " opening_reported_at = CASE WHEN %(opening)s THEN now() ELSE opening_reported_at END,"
    " closing_reported_at = CASE WHEN %(closing)s THEN now() ELSE closing_reported_at END"
    " WHERE meter_id = %(meter_id)s AND channel = %(channel)s AND period = %(period)s"
)


def _adjustments(
    meter_id: str,
    channel: str,
    period: str,
    boundaries: list[_Boundary],
    *,
    billed: float | None,
    series: SeriesFalls,
    policy: BillingPolicy,
    capacity: float | None,
) -> list[tuple[_Boundary, CorrectionRow]]:
    """One row per superseded estimate of one billed period, in the order they were replaced.

    The first starts from the consumption as billed (``billed``); each later one from the
    figure the row before it corrected to. ``series`` is the period's series as the export
    judged it, so a wrap is judged as the bill judged it.
    """
    reads = {b.role: b.billed for b in boundaries}

    def used() -> float | None:
        return consumption_between(
            reads["opening"], reads["closing"], series, policy, capacity=capacity
        ).consumption

    rows: list[tuple[_Boundary, CorrectionRow]] = []
    before = billed
    # Rows already delivered come first, in the order they were delivered, so that a later
    # supersession never changes a row billing has: then by when each estimate was replaced.
    replaced = sorted(
        (b for b in boundaries if b.superseded_at is not None),
        key=lambda b: (
            b.reported_at is None,
            b.reported_at or b.superseded_at,
            b.superseded_at,
            b.role != "opening",
        ),
    )
    for b in replaced:
        assert b.actual is not None and b.method is not None and b.superseded_at is not None
        reads[b.role] = b.actual
        after = used()
        row = CorrectionRow(
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
        rows.append((b, row))
        before = after
    return rows


async def correction_rows(
    conn: AsyncConnection[Any],
    *,
    period: Period | None = None,
    since: datetime | None = None,
    new: bool = False,
    now: datetime,
    policy: BillingPolicy | None = None,
    actor: str | None = None,
) -> AsyncGenerator[list[CorrectionRow], None]:
    """Rows for estimates superseded since ``since`` and/or of billed ``period``.

    With ``new``: only rows no earlier ``new`` report delivered, and they are marked delivered
    when the report's transaction commits (after its last row); two such reports at once
    deliver each row once. A delivery is audited (``billing.corrections.deliver``, by
    ``actor``, with the number of rows).
    """
    policy = policy or BillingPolicy()
    async with conn.transaction():
        await supersede_covered(conn, policy, now=now)
        params = {
            "since": since,
            "period": None if period is None else str(period),
            "new": new,
        }
        delivered: list[dict[str, Any]] = []
        async with conn.cursor(name="billing_corrections") as cur:
            await cur.execute(_BILLS_NEW if new else _BILLS, params)
            while rows := await cur.fetchmany(_BATCH):
                batch: list[CorrectionRow] = []
                for row in rows:
                    keep = _keep(row, since=since, new=new, policy=policy)
                    batch.extend(correction for _, correction in keep)
                    if new and keep:
                        roles = {b.role for b, _ in keep}
                        delivered.append(
                            {
                                "meter_id": row[0],
                                "channel": row[1],
                                "period": row[2],
                                "opening": "opening" in roles,
                                "closing": "closing" in roles,
                            }
                        )
                if batch:
                    yield batch
        if delivered:
            async with conn.cursor() as marks:
                await marks.executemany(_DELIVERED, delivered)
            await audit.record(
                conn,
                actor=actor,
                action="billing.corrections.deliver",
                object="billing_corrections",
                outcome="delivered",
                detail={"bills": len(delivered), "period": params["period"]},
            )


def _keep(
    row: tuple[Any, ...], *, since: datetime | None, new: bool, policy: BillingPolicy
) -> list[tuple[_Boundary, CorrectionRow]]:
    """The report's rows of one bill: those superseded since ``since``, or not yet delivered."""
    meter_id, channel, billed_period, capacity, billed, rollovers, rollbacks = row[:7]
    boundaries = [
        _Boundary(role, *row[start : start + 7])
        for role, start in (("opening", 7), ("closing", 14))
    ]
    adjustments = _adjustments(
        meter_id,
        channel,
        billed_period,
        boundaries,
        billed=billed,
        series=SeriesFalls(rollovers, rollbacks),
        policy=policy,
        capacity=capacity,
    )
    return [
        (b, correction)
        for b, correction in adjustments
        if (since is None or correction.superseded_at >= since)
        and (not new or b.reported_at is None)
    ]


async def correction_bytes(
    conn: AsyncConnection[Any],
    *,
    file_format: FileFormat,
    now: datetime,
    period: Period | None = None,
    since: datetime | None = None,
    new: bool = False,
    policy: BillingPolicy | None = None,
    actor: str | None = None,
) -> AsyncGenerator[bytes, None]:
    enc = encoder(CORRECTION_SCHEMA, file_format)
    rows = correction_rows(
        conn, period=period, since=since, new=new, now=now, policy=policy, actor=actor
    )
    # One transaction for the whole file: what a ``new`` report marks delivered commits only
    # once the file's end (CSV trailer, Parquet footer) has been produced and taken by the
    # reader; a reader that stops before that rolls it back. A caller may hold an outer
    # transaction to commit later still (the command line: after the file is in place).
    async with conn.transaction():
        async with aclosing(rows) as batches:
            async for batch in batches:
                if data := enc.encode(batch):
                    yield data
        yield enc.finish()
