"""``gateway demo`` (what ``make run`` starts): the gateway with a simulated fleet, locally.

Finds or starts PostgreSQL and an MQTT broker (see :mod:`gateway.dev.services`) unless
``GATEWAY_DATABASE_URL`` / ``GATEWAY_MQTT_URL`` are set, applies migrations, runs the gateway
and a ``firmware-sim run`` fleet beside it, and prints how many readings have been stored every
few seconds until Ctrl-C, which stops the fleet, the gateway and anything it started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from pydantic import SecretStr

from firmware_sim.mqtt_link import BROKER_PASSWORD_ENV
from gateway import registry
from gateway.auth import Role, store
from gateway.auth.passwords import hash_password
from gateway.db.migrate import apply_migrations
from gateway.dev.services import BackingServices, ensure_services, free_ports
from gateway.errors import ConflictError, ServiceStartError
from gateway.keystore import SoftwareKeyStore
from gateway.keystore.envelope import Keyring, new_master_key, write_keyring
from gateway.keystore.provisioning import export_provisioning
from gateway.runtime import install_stop_signals
from gateway.service import GatewayHandle, run_gateway
from gateway.settings import Settings, redact_url

__all__ = ["run_demo"]

log = logging.getLogger(__name__)

REPORT_EVERY_S = 5.0
MANIFEST = "fleet-manifest.jsonl"
DEMO_MODBUS_INTERVAL_S = 5.0
# One simulated meter in this many is polled over Modbus; they share ports, this many unit ids
# on each, and the demo reserves enough consecutive free ports for them.
DEMO_MODBUS_ONE_IN = 10
DEMO_MODBUS_UNITS_PER_PORT = 50


async def _demo_principals(conninfo: str) -> None:
    """A demo administrator (password login) and a demo vendor (API key), printed once."""
    password = secrets.token_urlsafe(12)
    password_hash = await hash_password(password)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        for name, role in (("demo-admin", Role.ADMIN), ("demo-vendor", Role.VENDOR)):
            try:
                if role is Role.ADMIN:
                    await store.create_principal(
                        conn, name=name, role=role, kind="person", password_hash=password_hash
                    )
                    shown = f"password: {password}  (POST /auth/login)"
                else:
                    await store.create_principal(conn, name=name, role=role, kind="machine")
                    _, api_key = await store.add_api_key(conn, name, label="demo")
                    shown = f"API key: {api_key}  (Authorization: Bearer …)"
            except ConflictError:
                shown = "exists; its credentials were shown when it was created"
            await conn.commit()
            print(f"[demo] {role.value} {name!r}: {shown}", flush=True)


def _demo_master_key(data_dir: Path) -> Path:
    path = data_dir / "master.key"
    if not path.exists():
        write_keyring(path, Keyring((new_master_key(),)))
    return path


async def _register_fleet(
    conninfo: str,
    manifest: Path,
    stop: asyncio.Event,
    keystore: SoftwareKeyStore | None = None,
    provisioning: Path | None = None,
) -> None:
    """Register the simulated meters from the fleet's manifest (operators do this in real life)."""
    for _ in range(200):  # the fleet writes its manifest right after it starts
        if await asyncio.to_thread(manifest.exists) or stop.is_set():
            break
        await asyncio.sleep(0.05)
    if not await asyncio.to_thread(manifest.exists):
        log.error("the fleet wrote no manifest at %s; meters stay unverified", manifest)
        return
    lines = (await asyncio.to_thread(manifest.read_text, encoding="utf-8")).splitlines()
    modbus_count = 0
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        for line in lines:
            row = json.loads(line)
            modbus = row.get("modbus") or {}
            modbus_count += bool(modbus)
            await registry.upsert_meter(
                conn,
                registry.MeterSpec(
                    meter_id=row["meter_id"],
                    utility=row["utility"],
                    payment="prepaid" if row.get("prepaid") else "postpaid",
                    transport=row["transport"],
                    reporting_interval_s=900,
                    modbus_host=modbus.get("host"),
                    modbus_port=modbus.get("port"),
                    modbus_unit=modbus.get("unit"),
                    modbus_word_order=modbus.get("word_order"),
                ),
            )
        if keystore is not None and provisioning is not None:
            # The gateway generates each meter's command key; the fleet reads it from here.
            ids = [json.loads(line)["meter_id"] for line in lines]
            await export_provisioning(conn, keystore, provisioning, ids)
            await conn.commit()
    print(
        f"[demo] registered {len(lines)} meters ({modbus_count} polled over Modbus TCP)",
        flush=True,
    )


def _broker_for_fleet(settings: Settings) -> tuple[str, dict[str, str]]:
    """The simulator's ``--broker`` URL without the password, and the environment carrying it.

    A password on the command line would be visible to every user of the machine (``ps``).
    """
    url = settings.mqtt_url.get_secret_value()
    parts = urlsplit(url)
    env = dict(os.environ)
    env.pop(BROKER_PASSWORD_ENV, None)
    if parts.password is None:
        return url, env
    env[BROKER_PASSWORD_ENV] = unquote(parts.password)
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}")), env


def _modbus_meters(meters: int) -> int:
    return max(1, meters // DEMO_MODBUS_ONE_IN)


def _fleet_command(
    settings: Settings, *, meters: int, speed: float, seed: int, modbus_port: int, data_dir: Path
) -> list[str]:
    script = Path(sys.executable).with_name("firmware-sim")
    binary = str(script) if script.exists() else shutil.which("firmware-sim")
    if binary is None:
        raise ServiceStartError("the firmware-sim command is not installed")
    command = [
        binary,
        "run",
        "--meters",
        str(meters),
        "--broker",
        _broker_for_fleet(settings)[0],
        "--speed",
        str(speed),
        "--seed",
        str(seed),
        "--modbus-port",
        str(modbus_port),
        "--modbus-meters",
        str(_modbus_meters(meters)),
        "--units-per-port",
        str(DEMO_MODBUS_UNITS_PER_PORT),
        "--manifest",
        str(data_dir / MANIFEST),
        "--truth",
        str(data_dir / "ground-truth.jsonl"),
    ]
    if settings.mqtt_topic_prefix:
        command += ["--prefix", settings.mqtt_topic_prefix]
    if settings.provisioning_dir is not None:
        command += ["--provisioning", str(settings.provisioning_dir)]
    return command


async def _report(conninfo: str, stop: asyncio.Event) -> None:
    """Print the stored-readings count (the demo's visible proof of life)."""
    previous: int | None = None
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while not stop.is_set():
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM meters),"
                " (SELECT count(*) FROM dead_letters)"
            )
            row = await cur.fetchone()
            assert row is not None
            readings, meters, dead = (int(v) for v in row)
            delta = "" if previous is None else f" (+{readings - previous})"
            print(
                f"[demo] readings stored: {readings}{delta}, meters: {meters}, "
                f"dead letters: {dead}",
                flush=True,
            )
            previous = readings
            try:
                await asyncio.wait_for(stop.wait(), REPORT_EVERY_S)
            except TimeoutError:
                continue


async def _watch_fleet(proc: asyncio.subprocess.Process, stop: asyncio.Event) -> None:
    code = await proc.wait()
    if not stop.is_set():
        log.error("the simulated fleet exited with code %s; stopping the demo", code)
        stop.set()


async def run_demo(settings: Settings, *, meters: int, speed: float, seed: int) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    explicit = settings.model_fields_set
    services: BackingServices | None = None
    if not {"database_url", "mqtt_url"} <= explicit:
        services = await asyncio.to_thread(ensure_services, data_dir)
        updates: dict[str, object] = {}
        if "database_url" not in explicit:
            updates["database_url"] = SecretStr(services.database_url)
        if "mqtt_url" not in explicit:
            updates["mqtt_url"] = SecretStr(services.mqtt_url)
        settings = settings.model_copy(update=updates)
        for note in services.notes:
            log.info(note)
    demo_defaults: dict[str, object] = {
        "master_key_file": settings.master_key_file or _demo_master_key(data_dir),
        "provisioning_dir": data_dir / "provisioning",
        "modbus_enabled": True,
        "modbus_interval_s": DEMO_MODBUS_INTERVAL_S,
        "modbus_refresh_s": 2.0,
    }
    settings = settings.model_copy(
        update={k: v for k, v in demo_defaults.items() if k not in explicit}
    )
    conninfo = settings.database_url.get_secret_value()
    try:
        await asyncio.to_thread(
            apply_migrations,
            conninfo,
            timescale=settings.timescaledb,
            time_zone=settings.deployment_time_zone,
        )
        await _demo_principals(conninfo)
        keystore = SoftwareKeyStore(settings.master_key_file) if settings.master_key_file else None
        started: asyncio.Future[GatewayHandle] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as tg:
            gateway = tg.create_task(run_gateway(settings, stop, started=started), name="gateway")
            first: set[asyncio.Future[Any]] = {gateway, started}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                return 1
            handle = started.result()
            base = f"http://{settings.http_host}:{handle.http_port}"
            print(
                f"[demo] gateway up. HTTP API: {base}  docs: {base}/docs  metrics: {base}/metrics\n"
                f"[demo] database: {redact_url(conninfo)}\n"
                f"[demo] broker:   {redact_url(settings.mqtt_url.get_secret_value())}\n"
                f"[demo] starting {meters} simulated meters; Ctrl-C stops everything",
                flush=True,
            )
            (data_dir / MANIFEST).unlink(missing_ok=True)
            fleet = await asyncio.create_subprocess_exec(
                *_fleet_command(
                    settings,
                    meters=meters,
                    speed=speed,
                    seed=seed,
                    modbus_port=free_ports(
                        -(-_modbus_meters(meters) // DEMO_MODBUS_UNITS_PER_PORT)
                    ),
                    data_dir=data_dir,
                ),
                cwd=data_dir,
                env=_broker_for_fleet(settings)[1],
            )
            tg.create_task(_watch_fleet(fleet, stop), name="fleet-watch")
            tg.create_task(
                _register_fleet(
                    conninfo, data_dir / MANIFEST, stop, keystore, settings.provisioning_dir
                ),
                name="fleet-register",
            )
            tg.create_task(_report(conninfo, stop), name="demo-report")
            await stop.wait()
            if fleet.returncode is None:
                fleet.terminate()
                try:
                    await asyncio.wait_for(fleet.wait(), 15)
                except TimeoutError:
                    fleet.kill()
    finally:
        if services is not None:
            await asyncio.to_thread(services.close)
    print("[demo] stopped", flush=True)
    return 0
