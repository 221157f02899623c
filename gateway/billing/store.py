"""SQL of the billing feature: usable points, stored estimates, superseding them.

A *usable point* is a register value billing may rely on: a telemetry reading of quality
``measured`` or ``backfilled`` (never ``estimated``), or an accepted person's read. Every
function runs in the caller's connection and transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from psycopg import AsyncConnection

from gateway.billing.core import (
    BillingPolicy,
    BoundaryRead,
    EstimateMethod,
    Point,
    ReadMethod,
    ReadSource,
    SeriesFalls,
    daily_rate,
    estimate_value,
    resolve_boundary,
    shift_months,
)
from gateway.billing.period import Period

__all__ = [
    "MAIN_REGISTER",
    "REGISTERS",
    "BilledRead",
    "StoredEstimate",
    "current_estimate",
    "point",
    "record_bill",
    "settled_read",
    "supersede",
    "supersede_covered",
]

REGISTERS: Final = {
    "electricity": (("1.8.0", "kWh"), ("2.8.0", "kWh")),
    "water": (("24.2.1", "m3"), ("24.2.2", "m3")),
}
"""Billing registers by utility; the first is the main one, always exported."""
MAIN_REGISTER: Final = {utility: regs[0][0] for utility, regs in REGISTERS.items()}
UNITS: Final = {name: unit for regs in REGISTERS.values() for name, unit in regs}

_SMART: Final = (
    "SELECT ts, value, 'actual' AS method FROM reading_data"
    " WHERE meter_id = %(m)s AND channel = %(c)s AND quality <> 'estimated'"
    " AND ts >= %(lo)s AND ts <= %(hi)s ORDER BY ts {order} LIMIT 1"
)
_PERSON: Final = (
    "SELECT ts, value, source AS method FROM billing_reads"
    " WHERE meter_id = %(m)s AND channel = %(c)s AND status = 'accepted'"
    " AND ts >= %(lo)s AND ts <= %(hi)s ORDER BY ts {order} LIMIT 1"
)
_POINT: Final = {
    order: f"SELECT ts, value, method FROM (({_SMART.format(order=order)})"
    f" UNION ALL ({_PERSON.format(order=order)})) u"
    f" ORDER BY ts {order}, method <> 'actual' LIMIT 1"  # on a tie telemetry wins
    for order in ("ASC", "DESC")
}
_FAR_PAST: Final = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_FAR_FUTURE: Final = datetime.fromisoformat("9999-01-01T00:00:00+00:00")


def as_point(ts: datetime | None, value: float | None, method: str | None) -> Point | None:
    """A point from a row's (ts, value, method-or-source) columns."""
    if ts is None or value is None or method is None:
        return None
    if method == "actual":
        return Point(ts, value)
    return Point(ts, value, ReadSource(method).method)


async def point(
    conn: AsyncConnection[Any],
    meter_id: str,
    channel: str,
    *,
    lo: datetime | None = None,
    hi: datetime | None = None,
    last: bool,
    exclude_read: int | None = None,
) -> Point | None:
    """The earliest (``last=False``) or latest usable point within [lo, hi]."""
    params = {
        "m": meter_id,
        "c": channel,
        "lo": lo or _FAR_PAST,
        "hi": hi or _FAR_FUTURE,
    }
    query = _POINT["DESC" if last else "ASC"]
    if exclude_read is not None:
        query = query.replace("status = 'accepted'", "status = 'accepted' AND id <> %(x)s")
        params["x"] = exclude_read
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else as_point(*row)


@dataclass(frozen=True, slots=True)
class StoredEstimate:
    id: int
    value: float
    method: EstimateMethod


async def current_estimate(
    conn: AsyncConnection[Any], meter_id: str, channel: str, boundary: datetime
) -> StoredEstimate | None:
    cur = await conn.execute(
        "SELECT id, value, method FROM billing_estimates WHERE meter_id = %s AND channel = %s"
        " AND boundary = %s AND superseded_at IS NULL",
        (meter_id, channel, boundary),
    )
    row = await cur.fetchone()
    return None if row is None else StoredEstimate(row[0], row[1], EstimateMethod(row[2]))


async def resolve_actual(
    conn: AsyncConnection[Any],
    meter_id: str,
    channel: str,
    at: datetime,
    policy: BillingPolicy,
    *,
    capacity: float | None,
) -> BoundaryRead | None:
    """Rules 1-3 at one boundary from the stored points; ``None`` when it needs an estimate."""
    window = policy.interpolation_window
    before = await point(conn, meter_id, channel, lo=at - window, hi=at, last=True)
    after = await point(conn, meter_id, channel, lo=at, hi=at + window, last=False)
    # The nearest usable point of each kind matters (a person's read beside telemetry).
    return resolve_boundary(at, [before], [after], policy, capacity=capacity)


async def _rate(
    conn: AsyncConnection[Any],
    *,
    meter_id: str,
    channel: str,
    at: datetime,
    basis: Point,
    method: EstimateMethod,
    policy: BillingPolicy,
    capacity: float | None,
) -> float | None:
    if method is EstimateMethod.LAST_3_MONTHS:
        first = await point(
            conn, meter_id, channel, lo=shift_months(basis.ts, -3), hi=basis.ts, last=False
        )
        return None if first is None else daily_rate(first, basis, policy, capacity=capacity)
    # the calendar month before the boundary, a year earlier, in the meter's own time zone
    cur = await conn.execute(
        "SELECT (%(at)s AT TIME ZONE time_zone - interval '13 months') AT TIME ZONE time_zone,"
        " (%(at)s AT TIME ZONE time_zone - interval '12 months') AT TIME ZONE time_zone"
        " FROM meters WHERE meter_id = %(m)s",
        {"at": at, "m": meter_id},
    )
    row = await cur.fetchone()
    assert row is not None
    start, end = row
    first = await point(conn, meter_id, channel, lo=start, hi=end, last=False)
    last = await point(conn, meter_id, channel, lo=start, hi=end, last=True)
    if first is None or last is None:
        return None
    return daily_rate(first, last, policy, capacity=capacity)


async def make_estimate(
    conn: AsyncConnection[Any],
    meter_id: str,
    channel: str,
    at: datetime,
    policy: BillingPolicy,
    *,
    capacity: float | None,
) -> tuple[BoundaryRead, int | None]:
    """Estimate the register at ``at``, store it (once) and return it with its id.

    The basis is the latest usable point before ``at`` (else the earliest after it); the rate
    comes from the policy's method, or the other method when the meter lacks data for it.
    ``capacity`` is the meter's ``register_max``. The estimate is stored in
    ``billing_estimates`` and as an ``estimated`` reading.
    """
    stored = await current_estimate(conn, meter_id, channel, at)
    if stored is not None:
        return BoundaryRead(stored.value, ReadMethod.ESTIMATED, stored.method), stored.id
    # An estimate made and superseded since the caller looked: the boundary is settled.
    settled = await settled_read(conn, meter_id, channel, at)
    if settled is not None:
        return settled, None
    basis = await point(conn, meter_id, channel, hi=at, last=True)
    if basis is None:
        basis = await point(conn, meter_id, channel, lo=at, last=False)
    if basis is None:
        return BoundaryRead(None, ReadMethod.UNAVAILABLE), None
    other = (
        EstimateMethod.SAME_MONTH_LAST_YEAR
        if policy.estimate_method is EstimateMethod.LAST_3_MONTHS
        else EstimateMethod.LAST_3_MONTHS
    )
    for method in (policy.estimate_method, other):
        rate = await _rate(
            conn,
            meter_id=meter_id,
            channel=channel,
            at=at,
            basis=basis,
            method=method,
            policy=policy,
            capacity=capacity,
        )
        if rate is not None:
            break
    else:
        return BoundaryRead(None, ReadMethod.UNAVAILABLE), None
    value = estimate_value(at, basis, rate, capacity=capacity)
    cur = await conn.execute(
        "INSERT INTO billing_estimates (meter_id, channel, boundary, value, method, daily_rate,"
        " basis_ts, basis_value) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (meter_id, channel, boundary) WHERE superseded_at IS NULL DO NOTHING"
        " RETURNING id",
        (meter_id, channel, at, value, method.value, rate, basis.ts, basis.value),
    )
    inserted = await cur.fetchone()
    if inserted is None:  # a concurrent export stored it first: bill that one
        stored = await current_estimate(conn, meter_id, channel, at)
        assert stored is not None
        return BoundaryRead(stored.value, ReadMethod.ESTIMATED, stored.method), stored.id
    await conn.execute(
        "INSERT INTO reading_data (meter_id, channel, ts, value, quality)"
        " VALUES (%s, %s, %s, %s, 'estimated') ON CONFLICT DO NOTHING",
        (meter_id, channel, at, value),
    )
    return BoundaryRead(value, ReadMethod.ESTIMATED, method), inserted[0]


async def supersede(
    conn: AsyncConnection[Any], estimate_id: int, actual: BoundaryRead
) -> BoundaryRead:
    """Mark an estimate superseded by ``actual`` and drop its ``estimated`` reading.

    Returns the boundary's read from now on: ``actual``, or the read that superseded the
    estimate first when another transaction already had. The time stamped is the statement's
    (``clock_timestamp()``), not the start of a long transaction.
    """
    cur = await conn.execute(
        "UPDATE billing_estimates SET superseded_at = clock_timestamp(), actual_value = %s,"
        " actual_method = %s WHERE id = %s AND superseded_at IS NULL"
        " RETURNING meter_id, channel, boundary",
        (actual.value, actual.method.value, estimate_id),
    )
    row = await cur.fetchone()
    if row is None:
        cur = await conn.execute(
            "SELECT actual_value, actual_method FROM billing_estimates WHERE id = %s",
            (estimate_id,),
        )
        settled = await cur.fetchone()
        assert settled is not None
        return BoundaryRead(settled[0], ReadMethod(settled[1]))
    await conn.execute(
        "DELETE FROM reading_data WHERE meter_id = %s AND channel = %s AND ts = %s"
        " AND quality = 'estimated'",
        row,
    )
    return actual


async def settled_read(
    conn: AsyncConnection[Any], meter_id: str, channel: str, boundary: datetime
) -> BoundaryRead | None:
    """The read that replaced an estimate at this boundary (the latest), if one did."""
    cur = await conn.execute(
        "SELECT actual_value, actual_method FROM billing_estimates WHERE meter_id = %s"
        " AND channel = %s AND boundary = %s AND superseded_at IS NOT NULL"
        " ORDER BY superseded_at DESC LIMIT 1",
        (meter_id, channel, boundary),
    )
    row = await cur.fetchone()
    return None if row is None else BoundaryRead(row[0], ReadMethod(row[1]))


@dataclass(frozen=True, slots=True)
class BilledRead:
    """A boundary read as an export billed it."""

    at: datetime
    read: BoundaryRead
    estimate_id: int | None
    """The stored estimate it is, when it is one."""


async def record_bill(
    conn: AsyncConnection[Any],
    *,
    meter_id: str,
    channel: str,
    period: Period,
    opening: BilledRead,
    closing: BilledRead,
    consumption: float | None,
    series: SeriesFalls,
) -> None:
    """Keep what a period was billed on when either boundary read is an estimate.

    The first export to bill the period on an estimate is kept; later ones change nothing.
    A period without both reads was not billed and is not kept.
    """
    if opening.read.value is None or closing.read.value is None:
        return
    if opening.estimate_id is None and closing.estimate_id is None:
        return
    await conn.execute(
        "INSERT INTO billing_estimated_bills (meter_id, channel, period, opening_at,"
        " opening_read, opening_method, opening_estimate, closing_at, closing_read,"
        " closing_method, closing_estimate, consumption, series_rollovers, series_rollbacks)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (
            meter_id,
            channel,
            str(period),
            opening.at,
            opening.read.value,
            opening.read.method.value,
            opening.estimate_id,
            closing.at,
            closing.read.value,
            closing.read.method.value,
            closing.estimate_id,
            consumption,
            series.rollovers,
            series.rollbacks,
        ),
    )


_CANDIDATE: Final = "e.id, e.meter_id, e.channel, e.boundary, m.register_max"
"""An estimate that may be covered now, with its meter's register capacity."""


async def supersede_covered(
    conn: AsyncConnection[Any], policy: BillingPolicy, *, now: datetime
) -> None:
    """Supersede every current estimate that usable points now cover (late telemetry, reads).

    One statement finds the estimates with a usable point within the interpolation window of
    their boundary; each is then resolved by the boundary rules, as an export would. An
    estimate a running export holds (it is superseding it) is left to that export.
    """
    cur = await conn.execute(
        f"SELECT {_CANDIDATE} FROM billing_estimates e JOIN meters m USING (meter_id)"
        " WHERE e.superseded_at IS NULL AND e.boundary <= %(now)s AND (EXISTS ("
        " SELECT 1 FROM reading_data r WHERE r.meter_id = e.meter_id AND r.channel = e.channel"
        " AND r.quality <> 'estimated' AND r.ts >= e.boundary - %(w)s"
        " AND r.ts <= e.boundary + %(w)s) OR EXISTS (SELECT 1 FROM billing_reads b"
        " WHERE b.meter_id = e.meter_id AND b.channel = e.channel AND b.status = 'accepted'"
        " AND b.ts >= e.boundary - %(w)s AND b.ts <= e.boundary + %(w)s))"
        " ORDER BY e.meter_id, e.channel, e.boundary FOR UPDATE OF e SKIP LOCKED",
        {"now": now, "w": policy.interpolation_window},
    )
    await _settle(conn, await cur.fetchall(), policy)


async def covering_estimates(
    conn: AsyncConnection[Any], meter_id: str, channel: str, policy: BillingPolicy
) -> None:
    """Supersede every current estimate of a register that usable points now cover.

    An estimate an export is superseding at this moment (its row locked until the export ends,
    minutes for a large fleet) is skipped rather than waited for: the export or the next
    corrections report settles it.
    """
    cur = await conn.execute(
        f"SELECT {_CANDIDATE} FROM billing_estimates e JOIN meters m USING (meter_id)"
        " WHERE e.meter_id = %s AND e.channel = %s AND e.superseded_at IS NULL"
        " ORDER BY e.boundary FOR UPDATE OF e SKIP LOCKED",
        (meter_id, channel),
    )
    await _settle(conn, await cur.fetchall(), policy)


async def _settle(
    conn: AsyncConnection[Any], candidates: list[tuple[Any, ...]], policy: BillingPolicy
) -> None:
    """Supersede each candidate (:data:`_CANDIDATE`) the boundary rules now resolve."""
    for estimate_id, meter_id, channel, at, capacity in candidates:
        actual = await resolve_actual(conn, meter_id, channel, at, policy, capacity=capacity)
        if actual is not None:
            await supersede(conn, estimate_id, actual)
