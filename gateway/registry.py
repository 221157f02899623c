"""The meter registry: registering, updating, confirming and looking up meters (SQL).

Meters that report before anyone registered them are inserted by the ingest writer as
unverified; an operator confirms them here, completing utility, transport and Modbus details.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway.errors import NotFoundError
from tokens.meter_number import luhn_check_digit, luhn_valid

__all__ = [
    "UTILITY_DEFAULT_SIZE",
    "MeterSpec",
    "get_meter",
    "list_meters",
    "meter_number_candidates",
    "search_meters",
    "upsert_meter",
    "verify_meter",
]

_COLUMNS: Final = (
    "m.meter_id, m.utility, m.payment, m.transport, m.verified, m.reporting_interval_s,"
    " m.time_zone, m.modbus_host, m.modbus_port, m.modbus_unit, m.modbus_word_order,"
    " m.register_map, m.export_allowed, m.register_max, m.created_at, m.last_seen,"
    " m.last_reading_ts, m.online, m.status, m.address, m.area, m.latitude, m.longitude,"
    " m.reconnect_mode,"
    " c.comms_state, v.account_id AS account, sz.size,"
    " CASE WHEN v.sgc IS NULL THEN NULL ELSE jsonb_build_object('sgc', v.sgc, 'krn', v.krn,"
    " 'ti', v.ti, 'key_type', v.key_type, 'base_date', v.base_date, 'ea', v.ea, 'dkga', v.dkga)"
    " END AS sts"
)
_FROM: Final = (
    " FROM meters m JOIN meter_comms c USING (meter_id) LEFT JOIN meter_vending v USING (meter_id)"
    " LEFT JOIN billing_meter_sizes sz USING (meter_id)"
)
UTILITY_DEFAULT_SIZE: Final = "*"
"""As a meter's size: it has no size class of its own (the utility's default limits apply)."""


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """What an operator states about a meter."""

    meter_id: str
    utility: str
    payment: str
    transport: str
    reporting_interval_s: int
    time_zone: str = "UTC"
    verified: bool = True
    modbus_host: str | None = None
    modbus_port: int | None = None
    modbus_unit: int | None = None
    modbus_word_order: str | None = None
    register_map: Mapping[str, Any] | None = None
    export_allowed: bool = False
    """Registered small-scale embedded generation: export is not reverse flow."""
    register_max: float | None = None
    """Capacity at which the main register rolls over (None: the next power of ten)."""
    sts: Mapping[str, Any] | None = None
    """STS key data for vending (sgc, krn, ti, key_type, base_date, ea, dkga); None: unchanged."""
    account: str | None = None
    """The customer account the meter bills to; None: unchanged."""
    address: str | None = None
    """Street address, for the field visit."""
    area: str | None = None
    """Suburb or area, for grouping visits."""
    latitude: float | None = None
    longitude: float | None = None
    reconnect_mode: str = "remote"
    """``arm``: a remote reconnect only arms the relay; the customer presses the button."""
    size: str | None = None
    """Size class (``15mm``, ``80A-3ph``) for the plausibility limits of person's reads;
    ``*``: none (the utility's default); None: unchanged."""


async def _upsert_size(conn: AsyncConnection[Any], meter_id: str, size: str) -> None:
    if size == UTILITY_DEFAULT_SIZE:
        await conn.execute("DELETE FROM billing_meter_sizes WHERE meter_id = %s", (meter_id,))
        return
    await conn.execute(
        "INSERT INTO billing_meter_sizes (meter_id, size) VALUES (%s, %s)"
        " ON CONFLICT (meter_id) DO UPDATE SET size = excluded.size",
        (meter_id, size),
    )


async def _upsert_vending(conn: AsyncConnection[Any], spec: MeterSpec) -> None:
    if spec.account is not None:
        await conn.execute(
            "INSERT INTO accounts (account_id) VALUES (%s) ON CONFLICT DO NOTHING",
            (spec.account,),
        )
    sts = spec.sts or {}
    columns = ("sgc", "krn", "ti", "key_type", "base_date", "ea", "dkga")
    values = [sts.get(column) for column in columns]
    # Key data are replaced together when given, and kept as recorded when not.
    source = "excluded" if spec.sts is not None else "meter_vending"
    assignments = ", ".join(f"{column} = {source}.{column}" for column in columns)
    await conn.execute(
        "INSERT INTO meter_vending (meter_id, account_id, sgc, krn, ti, key_type, base_date, ea,"
        " dkga) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (meter_id) DO UPDATE SET"
        " account_id = coalesce(excluded.account_id, meter_vending.account_id),"
        f" {assignments}, updated_at = now()",
        (spec.meter_id, spec.account, *values),
    )


async def upsert_meter(conn: AsyncConnection[Any], spec: MeterSpec) -> dict[str, Any]:
    """Register ``spec.meter_id`` or update it; returns the stored meter."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO meters (meter_id, utility, payment, transport, reporting_interval_s,"
            " time_zone, verified, modbus_host, modbus_port, modbus_unit, modbus_word_order,"
            " register_map, export_allowed, register_max, address, area, latitude, longitude,"
            " reconnect_mode)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (meter_id) DO UPDATE SET utility = excluded.utility,"
            " payment = excluded.payment, transport = excluded.transport,"
            " reporting_interval_s = excluded.reporting_interval_s,"
            " time_zone = excluded.time_zone, verified = excluded.verified,"
            " modbus_host = excluded.modbus_host, modbus_port = excluded.modbus_port,"
            " modbus_unit = excluded.modbus_unit, modbus_word_order = excluded.modbus_word_order,"
            " register_map = excluded.register_map, export_allowed = excluded.export_allowed,"
            " register_max = excluded.register_max, address = excluded.address,"
            " area = excluded.area, latitude = excluded.latitude, longitude = excluded.longitude,"
            " reconnect_mode = excluded.reconnect_mode",
            (
                spec.meter_id,
                spec.utility,
                spec.payment,
                spec.transport,
                spec.reporting_interval_s,
                spec.time_zone,
                spec.verified,
                spec.modbus_host,
                spec.modbus_port,
                spec.modbus_unit,
                spec.modbus_word_order,
                Jsonb(dict(spec.register_map)) if spec.register_map is not None else None,
                spec.export_allowed,
                spec.register_max,
                spec.address,
                spec.area,
                spec.latitude,
                spec.longitude,
                spec.reconnect_mode,
            ),
        )
        if spec.sts is not None or spec.account is not None:
            await _upsert_vending(conn, spec)
        if spec.size is not None:
            await _upsert_size(conn, spec.meter_id, spec.size)
    return await get_meter(conn, spec.meter_id)


async def get_meter(conn: AsyncConnection[Any], meter_id: str) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS}{_FROM} WHERE m.meter_id = %s", (meter_id,))
        row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"meter {meter_id!r} is not registered")
    return row


async def verify_meter(conn: AsyncConnection[Any], meter_id: str) -> dict[str, Any]:
    cur = await conn.execute("UPDATE meters SET verified = true WHERE meter_id = %s", (meter_id,))
    if cur.rowcount == 0:
        raise NotFoundError(f"meter {meter_id!r} is not registered")
    return await get_meter(conn, meter_id)


async def list_meters(
    conn: AsyncConnection[Any],
    *,
    verified: bool | None = None,
    transport: str | None = None,
    utility: str | None = None,
    area: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """Meters ordered by id, keyset-paginated with ``after`` (the last id of the previous page)."""
    conditions = ["true"]
    params: list[Any] = []
    filters = (("verified", verified), ("transport", transport), ("utility", utility))
    for column, value in (*filters, ("area", area)):
        if value is not None:
            conditions.append(f"m.{column} = %s")
            params.append(value)
    if after is not None:
        conditions.append("m.meter_id > %s")
        params.append(after)
    params.append(limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS}{_FROM} WHERE {' AND '.join(conditions)}"
            " ORDER BY m.meter_id LIMIT %s",
            params,
        )
        return await cur.fetchall()


def meter_number_candidates(text: str) -> list[str]:
    """Meter ids ``text`` may denote: as typed, without its check digit when the last digit is a
    valid Luhn check digit, and with the check digit added (people type either form)."""
    text = text.strip()
    candidates = [text]
    if text.isdigit() and text.isascii() and len(text) >= 2:
        if luhn_valid(text):
            candidates.append(text[:-1])
        candidates.append(text + str(luhn_check_digit(text)))
    return candidates


async def search_meters(
    conn: AsyncConnection[Any], text: str, *, area: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Meters found by meter number (with or without its check digit), account or address;
    exact number and account matches first, then addresses containing ``text``."""
    pattern = "%" + text.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    conditions = [
        "(m.meter_id = ANY(%s) OR v.account_id = %s OR m.address ILIKE %s OR m.meter_id LIKE %s)"
    ]
    params: list[Any] = [meter_number_candidates(text), text.strip(), pattern, pattern]
    if area is not None:
        conditions.append("m.area = %s")
        params.append(area)
    params.extend([meter_number_candidates(text), text.strip(), limit])
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS}{_FROM} WHERE {' AND '.join(conditions)}"
            " ORDER BY (m.meter_id = ANY(%s) OR v.account_id IS NOT DISTINCT FROM %s) DESC,"
            " m.meter_id LIMIT %s",
            params,
        )
        return await cur.fetchall()
