"""Simulated meters reporting live to a running gateway through the real broker.

The gateway judges delivery (comms silence, clock drift) against its own receive clock,
PostgreSQL's ``now()``, which cannot be sped up. So the fleet's clock is a
:class:`~firmware_sim.clock.WallClock` capped at the wall: it starts ``history`` in the past and
runs ``speed`` times faster than real time until it has caught up (that history reaches the
gateway late, as fast as it is produced), then in real time: from then on every message is
published when its meter produces it and arrives live. Meters report every few seconds so that
a live phase of a minute holds many intervals; rule thresholds that are counted in intervals
scale with them, the others are set per test (``GATEWAY_DETECTION_RULES``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from firmware_sim.clock import WallClock
from firmware_sim.device import Device
from firmware_sim.faults import Fault
from firmware_sim.fleet import FleetSpec, GroundTruth, build_fleet, run_fleet
from firmware_sim.identity import MeterIdentity, Transport, Utility, make_identity
from firmware_sim.meter import MeterConfig
from firmware_sim.mqtt_link import parse_broker_url
from gateway.service import GatewayHandle
from protocols.topics import Topics
from tests.plugins.gateway import db_scalar


def identities(seed: int, utilities: Sequence[Utility]) -> list[MeterIdentity]:
    """Post-paid MQTT meters (no credit to run out of), one per entry of ``utilities``."""
    return [
        make_identity(seed, index, transport=Transport.MQTT, utility=utility, prepaid=False)
        for index, utility in enumerate(utilities)
    ]


def live_clock(history: timedelta, speed: float) -> WallClock:
    """A clock ``history`` in the past, running at ``speed`` until it meets the wall."""
    return WallClock(datetime.now(UTC) - history, speed, cap_at_wall=True)


def devices_for(
    seed: int,
    idents: Sequence[MeterIdentity],
    clock: WallClock,
    interval_s: int,
    faults: Mapping[str, Sequence[Fault]],
) -> list[Device]:
    """One reading per message every ``interval_s``; physics stepped once per interval, so
    an instantaneous sample stands exactly for the interval it ends."""
    spec = FleetSpec(
        seed=seed,
        meters=len(idents),
        config=MeterConfig(interval_s=interval_s, tick_s=interval_s),
        batch=1,
    )
    return build_fleet(spec, clock.start, faults, identities=idents)


def register(url: str, devices: Sequence[Device], interval_s: int) -> None:
    """Register the meters as an operator would: utility, interval, export where it has PV."""
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO meters (meter_id, utility, payment, verified, reporting_interval_s,"
            " export_allowed) VALUES (%s, %s, 'postpaid', true, %s, %s)",
            [
                (
                    d.meter_id,
                    d.meter.identity.utility.value,
                    interval_s,
                    d.meter.is_electric and d.meter.e_profile.pv_kwp > 0,
                )
                for d in devices
            ],
        )


@asynccontextmanager
async def fleet_running(
    devices: Sequence[Device], clock: WallClock, mqtt_url: str, topic_prefix: str
) -> AsyncIterator[GroundTruth]:
    """Run the meters over one data-concentrator connection until the block ends; then they
    flush what they hold and the ground truth of faults still active is written."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    truth = GroundTruth(None)
    task = asyncio.create_task(
        run_fleet(
            devices,
            clock=clock,
            stop=stop,
            truth=truth,
            broker=parse_broker_url(mqtt_url),
            topics=Topics(topic_prefix),
            per_connection=len(devices),
            session_expiry=60,
            link_prefix=f"live-{topic_prefix.strip('/').replace('/', '-')}",
            ready=ready,
        ),
        name="live-fleet",
    )
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()
        raise AssertionError("the fleet stopped before it started")
    if not done:
        task.cancel()
        raise AssertionError("the fleet did not connect within 30 s")
    try:
        yield truth
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(moment: datetime) -> None:
    """Sleep until wall time ``moment``."""
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


async def settle(url: str, handle: GatewayHandle, *, timeout: float = 60.0) -> None:
    """Until everything published is committed and detection has drained its queue."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = -1
    quiet = 0
    while loop.time() < deadline:
        count = db_scalar(url, "SELECT count(*) FROM reading_data")
        queued = db_scalar(url, "SELECT count(*) FROM detection_queue")
        busy = handle.services.pipeline.pending_rows
        quiet = quiet + 1 if (count == last and queued == 0 and busy == 0) else 0
        if quiet >= 3:
            return
        last = count
        await asyncio.sleep(1.0)
    raise AssertionError("ingest and detection did not settle in time")


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    meter_id: str
    kind: str
    start: datetime
    end: datetime | None
    evidence: Mapping[str, Any]


def current_alerts(url: str) -> list[Alert]:
    """Every alert not withdrawn, by id."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            'SELECT id, meter_id, kind, start, "end", evidence FROM alerts ORDER BY id'
        ).fetchall()
    return [Alert(*row) for row in rows]


def withdrawn_alerts(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT meter_id, kind FROM alert_data WHERE withdrawn_at IS NOT NULL ORDER BY id"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]
