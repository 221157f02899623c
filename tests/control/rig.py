"""A test rig for commands to meters: simulated meters with provisioned command keys on the
real broker, registered in the real database, and their accounts.

The meters run on the wall clock (a command's validity is checked against the meter's clock),
read the command keys the gateway's key store generated from their provisioning files, and
publish their readings, status and command replies like any meter.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from firmware_sim.clock import WallClock
from firmware_sim.device import Device
from firmware_sim.faults import Fault, FaultKind
from firmware_sim.fleet import FleetSpec, GroundTruth, build_fleet, run_fleet
from firmware_sim.identity import MeterIdentity, Transport, Utility, make_identity
from firmware_sim.meter import MeterConfig
from firmware_sim.mqtt_link import parse_broker_url
from firmware_sim.provisioning import ProvisionedKeys
from gateway.control.policy import DEFAULT_POLICY, policy_to_json
from gateway.keystore import SoftwareKeyStore
from gateway.keystore.envelope import Keyring, new_master_key, write_keyring
from gateway.keystore.provisioning import export_provisioning
from protocols.topics import Topics
from tests.plugins.auth import remember_secret

# Always inside the execution window (tests that need it closed change the policy).
OPEN_WINDOW: dict[str, Any] = {
    "window_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    "window_start": "00:00",
    "window_end": "23:59",
    "skip_holidays": False,
    "fleet_share_limit": "100",
}


_EVER = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def master_key_file(directory: Path) -> Path:
    path = directory / "master.key"
    keyring = Keyring((new_master_key(),))
    write_keyring(path, keyring)
    remember_secret(keyring.current.secret)
    return path


@dataclass(frozen=True, slots=True)
class Customer:
    """An account with one meter, as the billing system would describe it."""

    account_id: str
    utility: Utility
    prepaid: bool = False
    arrears: Decimal = Decimal("1500.00")
    essential: bool = False
    indigent: bool = False
    deaf: bool = False
    """The meter ignores every command (neither carries it out nor answers)."""


@dataclass(slots=True)
class Rig:
    database_url: str
    topics: Topics
    keystore: SoftwareKeyStore
    master_key: Path
    broker_url: str
    provisioning: Path
    meters: dict[str, str] = field(default_factory=dict)
    """account id → meter id"""
    devices: dict[str, Device] = field(default_factory=dict)
    per_connection: int = 1
    link_prefix: str = "cmd"
    _stop: asyncio.Event | None = None
    _task: asyncio.Task[Any] | None = None

    def start_meters(self) -> None:
        """Connect the meters (again: same client ids and sessions, so queued commands
        reach them)."""
        assert self._task is None, "the meters are running"
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            run_fleet(
                list(self.devices.values()),
                clock=WallClock(datetime.now(UTC)),
                stop=self._stop,
                truth=GroundTruth(None),
                broker=parse_broker_url(self.broker_url),
                topics=self.topics,
                per_connection=self.per_connection,
                session_expiry=3600,
                link_prefix=self.link_prefix,
                provisioning=ProvisionedKeys(self.provisioning),
            ),
            name="meter-fleet",
        )

    async def stop_meters(self) -> None:
        """Disconnect the meters cleanly (each publishes its offline status)."""
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        await asyncio.wait_for(self._task, 60)
        self._task = None


async def set_policy(database_url: str, **changes: Any) -> None:
    """Store a policy version: the defaults with ``OPEN_WINDOW`` and ``changes``."""
    policy = policy_to_json(DEFAULT_POLICY) | OPEN_WINDOW | changes
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT coalesce(max(version), 0) + 1 FROM control_policies")
        got = await cur.fetchone()
        assert got is not None
        await conn.execute(
            "INSERT INTO control_policies (version, policy, created_by) VALUES (%s, %s, 'test')",
            (got[0], Jsonb(policy)),
        )


async def _register(
    database_url: str,
    customers: Sequence[Customer],
    identities: Sequence[MeterIdentity],
    keystore: SoftwareKeyStore,
    provisioning: Path,
) -> None:
    rows = list(zip(customers, identities, strict=True))
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO accounts (account_id, arrears, arrears_since, essential,"
                " indigent_from, contact_numbers) VALUES (%s, %s, '2026-06-01', %s, %s,"
                " '{+27820000001}')",
                [
                    (c.account_id, c.arrears, c.essential, date(2026, 1, 1) if c.indigent else None)
                    for c, _ in rows
                ],
            )
            await cur.executemany(
                "INSERT INTO meters (meter_id, utility, payment, verified, reporting_interval_s)"
                " VALUES (%s, %s, %s, true, 60)",
                [
                    (i.meter_id, c.utility.value, "prepaid" if c.prepaid else "postpaid")
                    for c, i in rows
                ],
            )
            await cur.executemany(
                "INSERT INTO meter_vending (meter_id, account_id) VALUES (%s, %s)",
                [(i.meter_id, c.account_id) for c, i in rows],
            )
            # Both notices served long ago: the final notice period is over.
            await cur.executemany(
                "INSERT INTO control_accounts (account_id, notice_served_on,"
                " final_notice_served_on) VALUES (%s, '2026-09-01', '2026-10-01')",
                [(c.account_id,) for c, _ in rows],
            )
        await conn.commit()
        await export_provisioning(conn, keystore, provisioning, [i.meter_id for _, i in rows])
        await conn.commit()


async def rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of one query, on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(sql, args)
        return await cur.fetchall()


async def wait_online(database_url: str, meter_ids: Sequence[str], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while True:
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM meters WHERE meter_id = ANY(%s) AND online"
                    " AND status_received_at IS NOT NULL",
                    (list(meter_ids),),
                )
                got = await cur.fetchone()
            if got and got[0] == len(meter_ids):
                return
            await asyncio.sleep(0.2)


@asynccontextmanager
async def meter_fleet(
    database_url: str,
    mqtt_url: str,
    topic_prefix: str,
    directory: Path,
    customers: Sequence[Customer],
    *,
    per_connection: int = 1,
) -> AsyncIterator[Rig]:
    """Register ``customers`` and run their meters until the block ends."""
    master = master_key_file(directory)
    keystore = SoftwareKeyStore(master)
    provisioning = directory / "provisioning"
    topics = Topics(topic_prefix)
    seed = 200 + uuid.uuid4().int % 1000
    identities = [
        make_identity(seed, n, transport=Transport.MQTT, utility=c.utility, prepaid=c.prepaid)
        for n, c in enumerate(customers)
    ]
    await _register(database_url, customers, identities, keystore, provisioning)
    faults: Mapping[str, Sequence[Fault]] = {
        i.meter_id: [Fault(i.meter_id, FaultKind.IGNORE_COMMANDS, _EVER[0], _EVER[1])]
        for c, i in zip(customers, identities, strict=True)
        if c.deaf
    }
    devices = build_fleet(
        FleetSpec(seed=seed, meters=len(identities), config=MeterConfig(interval_s=60)),
        datetime.now(UTC),
        faults=faults,
        identities=identities,
    )
    rig = Rig(
        database_url,
        topics,
        keystore,
        master,
        mqtt_url,
        provisioning,
        meters={c.account_id: i.meter_id for c, i in zip(customers, identities, strict=True)},
        devices={d.meter_id: d for d in devices},
        per_connection=per_connection,
        link_prefix=f"cmd{seed}",
    )
    rig.start_meters()
    try:
        yield rig
    finally:
        await rig.stop_meters()
