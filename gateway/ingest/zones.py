"""Meter time zones in memory, for reading device times written without a UTC offset.

The decoder needs a meter's registered ``time_zone`` for every message that carries a local
time, so the zones live in a dictionary (only meters not on UTC are kept). It is loaded from
``meters`` and kept current through PostgreSQL notifications: migration 0004's trigger sends
``meter_zone`` with ``"<meter_id> <zone>"`` whenever a meter is registered with a zone or its zone
changes, through this gateway's API or any other writer, so every gateway of a shared
subscription learns it at once. The whole map is also re-read every ``refresh_s`` seconds and
after every reconnection, in case a notification was missed while the listener was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

__all__ = ["APPLICATION_NAME", "CHANNEL", "MeterZones"]

log = logging.getLogger(__name__)

CHANNEL: Final = "meter_zone"
APPLICATION_NAME: Final = "gateway-meter-zones"
"""How the listening connection shows in ``pg_stat_activity``."""


def _zone(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


class MeterZones:
    """meter id → zone (UTC when unknown); call the object to look one up."""

    def __init__(self, *, refresh_s: float = 300.0, retry_max_s: float = 30.0) -> None:
        self._zones: dict[str, tzinfo] = {}
        self._refresh_s = refresh_s
        self._retry_max_s = retry_max_s
        self._unknown: set[str] = set()
        self.listening = asyncio.Event()
        """Set while notifications are being received (and the map was loaded after LISTEN)."""

    def __call__(self, meter_id: str) -> tzinfo:
        return self._zones.get(meter_id, UTC)

    def __len__(self) -> int:
        return len(self._zones)

    def set(self, meter_id: str, name: str) -> None:
        """Record ``meter_id``'s zone by IANA name (an unknown name reads as UTC, logged once)."""
        zone = self._resolve(meter_id, name)
        if zone is UTC:
            self._zones.pop(meter_id, None)
        else:
            self._zones[meter_id] = zone

    def _resolve(self, meter_id: str, name: str) -> tzinfo:
        if name == "UTC":
            return UTC
        zone = _zone(name)
        if zone is None:
            if name not in self._unknown:
                self._unknown.add(name)
                log.warning(
                    "meter time zone %r is not known here; its local times are read as UTC",
                    name[:64],
                    extra={"meter_id": meter_id},
                )
            return UTC
        return zone

    def apply_notification(self, payload: str) -> None:
        meter_id, _, name = payload.partition(" ")
        if meter_id and name:
            self.set(meter_id, name)

    async def load(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Replace the map with the zones stored in ``meters``."""
        cur = await conn.execute("SELECT meter_id, time_zone FROM meters WHERE time_zone <> 'UTC'")
        zones: dict[str, tzinfo] = {}
        for meter_id, name in await cur.fetchall():
            zone = self._resolve(str(meter_id), str(name))
            if zone is not UTC:
                zones[str(meter_id)] = zone
        self._zones = zones

    async def run(self, conninfo: str, stop: asyncio.Event) -> None:
        """Keep the map current until ``stop`` is set; survives database outages."""
        listener = asyncio.create_task(self._listen(conninfo), name="meter-zones-listen")
        try:
            await stop.wait()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self, conninfo: str) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, application_name=APPLICATION_NAME
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await self.load(conn)  # after LISTEN: nothing changed in between is missed
                    self.listening.set()
                    delay = 0.5
                    while True:
                        async for note in conn.notifies(timeout=self._refresh_s):
                            self.apply_notification(note.payload)
                        await self.load(conn)
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("meter time zones: database unavailable, retrying: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
