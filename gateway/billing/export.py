"""The billing export: one row per meter register and period, streamed in meter order.

One statement, read through a server-side cursor in batches, gives for each meter register
the nearest usable telemetry and person's read on both sides of both boundaries (index probes
on the keyed tables), the stored estimates at the boundaries, every fall of the register in
the period (a window scan of the period's own series, to tell a wrap from a register gone back)
and, when the detection feature's ``alerts`` view exists, the rollback / stuck-register alerts
overlapping the period, which are the row's flags of those kinds (on the register an alert
names, or on the main register when it names none), and the meter's ``register_max``. The pure
core turns that into boundary reads and consumption (a fall between the boundary reads is a
wrap only if the series' falls do not contradict it). Boundaries that need an estimate are
estimated and stored in the same transaction, so an export bills exactly what it stored; a
period billed on an estimate is recorded as billed (``billing_estimated_bills``) for the
corrections report.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any, Final

from psycopg import AsyncConnection

from gateway.billing.core import (
    BillingPolicy,
    BoundaryRead,
    EstimateMethod,
    Point,
    ReadMethod,
    SeriesFalls,
    period_consumption,
    resolve_boundary,
    to_decimal,
)
from gateway.billing.formats import EXPORT_SCHEMA, ExportRow, FileFormat, encoder
from gateway.billing.period import Period
from gateway.billing.store import (
    REGISTERS,
    UNITS,
    BilledRead,
    StoredEstimate,
    as_point,
    make_estimate,
    record_bill,
    supersede,
)

__all__ = ["export_bytes", "export_rows"]

BATCH_ROWS: Final = 5000

_REGISTER_VALUES: Final = ", ".join(
    f"('{utility}', '{name}', {'true' if i == 0 else 'false'})"
    for utility, regs in REGISTERS.items()
    for i, (name, _unit) in enumerate(regs)
)


def _probe(alias: str, table: str, side: str, at: str) -> str:
    """Nearest usable point of one kind on one side of a boundary, within the window."""
    order = "DESC" if side == "before" else "ASC"
    lo, hi = (f"{at} - p.w", at) if side == "before" else (at, f"{at} + p.w")
    if table == "smart":
        source = (
            "SELECT r.ts, r.value, 'actual'::text AS method FROM reading_data r"
            " WHERE r.meter_id = m.meter_id AND r.channel = c.channel"
            " AND r.quality <> 'estimated'"
        )
    else:
        source = (
            "SELECT r.ts, r.value, r.source AS method FROM billing_reads r"
            " WHERE r.meter_id = m.meter_id AND r.channel = c.channel AND r.status = 'accepted'"
        )
    return (
        f" LEFT JOIN LATERAL ({source} AND r.ts >= {lo} AND r.ts <= {hi}"
        f" ORDER BY r.ts {order} LIMIT 1) {alias} ON true"
    )


def _query(*, alerts: bool, utility: bool) -> str:
    probes = "".join(
        _probe(f"{b}{k}{s}", table, side, f"m.{b}_at")
        for b in ("open", "close")
        for k, table in (("s", "smart"), ("p", "person"))
        for s, side in (("b", "before"), ("a", "after"))
    )
    point_cols = ", ".join(
        f"{b}{k}{s}.ts, {b}{k}{s}.value, {b}{k}{s}.method"
        for b in ("open", "close")
        for k in ("s", "p")
        for s in ("b", "a")
    )
    estimates = "".join(
        f" LEFT JOIN billing_estimates e{b} ON e{b}.meter_id = m.meter_id"
        f" AND e{b}.channel = c.channel AND e{b}.boundary = m.{b}_at"
        f" AND e{b}.superseded_at IS NULL"
        + f" LEFT JOIN LATERAL (SELECT x.actual_value, x.actual_method FROM billing_estimates x"
        f" WHERE x.meter_id = m.meter_id AND x.channel = c.channel AND x.boundary = m.{b}_at"
        f" AND x.superseded_at IS NOT NULL ORDER BY x.superseded_at DESC LIMIT 1) s{b} ON true"
        for b in ("open", "close")
    )
    alert_join = (
        " LEFT JOIN LATERAL (SELECT array_agg(DISTINCT a.kind::text) AS kinds FROM alerts a"
        " WHERE a.meter_id = m.meter_id"
        " AND a.kind IN ('register_rollback', 'stuck_register')"
        " AND a.start < m.close_at AND coalesce(a.\"end\", 'infinity') > m.open_at"
        # An alert names the register it judged, or none: then it is the main one (the
        # stuck-register rule judges only that).
        " AND coalesce(a.evidence::jsonb ->> 'channel' = c.channel, c.main)) al ON true"
        if alerts
        else " CROSS JOIN (SELECT NULL::text[] AS kinds) al"
    )
    return (
        "WITH p AS (SELECT make_timestamp(%(year)s, %(month)s, 1, 0, 0, 0) AS start,"
        " make_timestamp(%(year)s, %(month)s, 1, 0, 0, 0) + interval '1 month' AS stop,"
        " %(window)s::interval AS w),"
        " m AS (SELECT meters.meter_id, meters.utility, meters.time_zone, meters.register_max,"
        " p.start AT TIME ZONE meters.time_zone AS open_at,"
        " p.stop AT TIME ZONE meters.time_zone AS close_at"
        " FROM meters, p WHERE meters.utility IN ('electricity', 'water')"
        + (" AND meters.utility = %(utility)s" if utility else "")
        + ")"
        " SELECT m.meter_id, m.utility, m.time_zone, c.channel, m.open_at, m.close_at, "
        + point_cols
        + ", eopen.id, eopen.value, eopen.method, eclose.id, eclose.value, eclose.method,"
        " sopen.actual_value, sopen.actual_method, sclose.actual_value, sclose.actual_method,"
        " d.drop_from, d.drop_to, al.kinds, m.register_max"
        f" FROM m CROSS JOIN p JOIN (VALUES {_REGISTER_VALUES}) AS c(utility, channel, main)"
        " ON c.utility = m.utility"
        + probes
        + estimates
        + " LEFT JOIN LATERAL (SELECT array_agg(s.prev ORDER BY s.ts) AS drop_from,"
        " array_agg(s.value ORDER BY s.ts) AS drop_to FROM (SELECT r.ts, r.value,"
        " lag(r.value) OVER (ORDER BY r.ts) AS prev FROM reading_data r"
        " WHERE r.meter_id = m.meter_id AND r.channel = c.channel"
        " AND r.quality <> 'estimated'"
        " AND r.ts >= coalesce(opensb.ts, m.open_at) AND r.ts <= coalesce(closesa.ts, m.close_at)"
        ") s WHERE s.value < s.prev) d ON true"
        + alert_join
        + " WHERE c.main OR opensb.ts IS NOT NULL OR opensa.ts IS NOT NULL"
        " OR closesb.ts IS NOT NULL OR closesa.ts IS NOT NULL"
        " OR openpb.ts IS NOT NULL OR openpa.ts IS NOT NULL"
        " OR closepb.ts IS NOT NULL OR closepa.ts IS NOT NULL"
        " OR EXISTS (SELECT 1 FROM reading_data r WHERE r.meter_id = m.meter_id"
        " AND r.channel = c.channel AND r.quality <> 'estimated'"
        " AND r.ts > m.open_at AND r.ts < m.close_at)"
        " OR EXISTS (SELECT 1 FROM billing_reads r WHERE r.meter_id = m.meter_id"
        " AND r.channel = c.channel AND r.status = 'accepted'"
        " AND r.ts > m.open_at AND r.ts < m.close_at)"
        " ORDER BY m.meter_id, c.channel"
    )


def _points(row: tuple[Any, ...], start: int) -> list[Point | None]:
    """Telemetry before, after, then person's read before, after one boundary."""
    return [as_point(*row[start + 3 * i : start + 3 * i + 3]) for i in range(4)]


def _stored(row: tuple[Any, ...], start: int) -> StoredEstimate | None:
    if row[start] is None:
        return None
    return StoredEstimate(row[start], row[start + 1], EstimateMethod(row[start + 2]))


def _settled(row: tuple[Any, ...], start: int) -> BoundaryRead | None:
    """The read that superseded an estimate at this boundary: billing's read of it from then on."""
    if row[start] is None:
        return None
    return BoundaryRead(row[start], ReadMethod(row[start + 1]))


async def _boundary(
    conn: AsyncConnection[Any],
    *,
    meter_id: str,
    channel: str,
    at: datetime,
    points: list[Point | None],
    stored: StoredEstimate | None,
    settled: BoundaryRead | None,
    policy: BillingPolicy,
    now: datetime,
    capacity: float | None,
) -> tuple[BoundaryRead, int | None]:
    """The boundary read, and the id of the estimate it is when it is one."""
    smart_before, smart_after, person_before, person_after = points
    read = resolve_boundary(
        at,
        [smart_before, person_before],
        [smart_after, person_after],
        policy,
        capacity=capacity,
    )
    if stored is not None:
        if read is None:
            return BoundaryRead(stored.value, ReadMethod.ESTIMATED, stored.method), stored.id
        return await supersede(conn, stored.id, read), None
    if settled is not None:
        # Once a read has replaced an estimate, the corrections report has adjusted the bills
        # with it: later data must not bill the boundary a second, different way.
        return settled, None
    if read is not None:
        return read, None
    if at + policy.interpolation_window > now:
        # Data for the boundary may still come in: a boundary is estimated only once the
        # interpolation window after it has passed (a period not ended is never estimated).
        return BoundaryRead(None, ReadMethod.UNAVAILABLE), None
    return await make_estimate(conn, meter_id, channel, at, policy, capacity=capacity)


def _row(
    period: Period,
    raw: tuple[Any, ...],
    opening: BoundaryRead,
    closing: BoundaryRead,
    policy: BillingPolicy,
) -> tuple[ExportRow, SeriesFalls]:
    meter_id, utility, time_zone, channel, open_at, close_at = raw[:6]
    drop_from, drop_to, alert_kinds, capacity = raw[-4:]
    falls = zip(drop_from or (), drop_to or (), strict=True)
    used = period_consumption(opening.value, closing.value, falls, policy, capacity=capacity)
    # A fall inside the series is flagged when detection found it a rollback (its alert, among
    # the kinds): jitter and a meter clock set back are not.
    flags = set(alert_kinds or ())
    if used.went_back:
        flags.add("register_rollback")
    if used.rolled_over:
        flags.add("register_rollover")
    row = ExportRow(
        period=str(period),
        meter_id=meter_id,
        utility=utility,
        register=channel,
        unit=UNITS[channel],
        time_zone=time_zone,
        opening_at=open_at,
        opening_read=to_decimal(opening.value),
        opening_method=opening.method.value,
        opening_estimate=opening.estimate_method.value if opening.estimate_method else None,
        closing_at=close_at,
        closing_read=to_decimal(closing.value),
        closing_method=closing.method.value,
        closing_estimate=closing.estimate_method.value if closing.estimate_method else None,
        consumption=to_decimal(used.consumption),
        flags=";".join(sorted(flags)),
    )
    return row, used.series


async def _has_alerts(conn: AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT to_regclass('alerts') IS NOT NULL")
    row = await cur.fetchone()
    return bool(row and row[0])


async def export_rows(
    conn: AsyncConnection[Any],
    period: Period,
    *,
    utility: str | None = None,
    policy: BillingPolicy | None = None,
    batch_rows: int = BATCH_ROWS,
    now: datetime | None = None,
) -> AsyncGenerator[list[ExportRow], None]:
    """The export's rows in (meter, register) order, ``batch_rows`` at a time.

    Runs in one transaction on ``conn``: the estimates it stores, and what it billed on them,
    commit with the export's end. A boundary is estimated only once the interpolation window
    after it has passed at ``now`` (default: the current time): until then its data may still
    arrive, and a period that has not ended has no closing read at all.
    """
    policy = policy or BillingPolicy()
    now = now or datetime.now(UTC)
    async with conn.transaction():
        query = _query(alerts=await _has_alerts(conn), utility=utility is not None)
        params = {
            "year": period.year,
            "month": period.month,
            "window": policy.interpolation_window,
            "utility": utility,
        }
        async with conn.cursor(name="billing_export") as cur:
            await cur.execute(query, params)
            while raws := await cur.fetchmany(batch_rows):
                yield [await _compose(conn, period, raw, policy, now) for raw in raws]


async def _compose(
    conn: AsyncConnection[Any],
    period: Period,
    raw: tuple[Any, ...],
    policy: BillingPolicy,
    now: datetime,
) -> ExportRow:
    meter_id, _utility, _tz, channel, open_at, close_at = raw[:6]
    capacity = raw[-1]
    (opening, opening_estimate), (closing, closing_estimate) = [
        await _boundary(
            conn,
            meter_id=meter_id,
            channel=channel,
            at=at,
            points=_points(raw, 6 + 12 * b),
            stored=_stored(raw, 30 + 3 * b),
            settled=_settled(raw, 36 + 2 * b),
            policy=policy,
            now=now,
            capacity=capacity,
        )
        for b, at in ((0, open_at), (1, close_at))
    ]
    row, series = _row(period, raw, opening, closing, policy)
    if opening_estimate is not None or closing_estimate is not None:
        await record_bill(
            conn,
            meter_id=meter_id,
            channel=channel,
            period=period,
            opening=BilledRead(open_at, opening, opening_estimate),
            closing=BilledRead(close_at, closing, closing_estimate),
            consumption=None if row.consumption is None else float(row.consumption),
            series=series,
        )
    return row


async def export_bytes(
    conn: AsyncConnection[Any],
    period: Period,
    *,
    file_format: FileFormat,
    utility: str | None = None,
    policy: BillingPolicy | None = None,
    now: datetime | None = None,
) -> AsyncGenerator[bytes, None]:
    """The export as a file, produced batch by batch."""
    enc = encoder(EXPORT_SCHEMA, file_format)
    rows = export_rows(conn, period, utility=utility, policy=policy, now=now)
    # aclosing: a reader that stops early ends the export's transaction (a rollback) at once.
    async with aclosing(rows) as batches:
        async for batch in batches:
            if data := enc.encode(batch):
                yield data
    yield enc.finish()
