"""The real gateway set up for vending measurements: a fresh database, vendors with API keys,
an encrypted key store, and ``gateway run`` processes serving it.

Used by :mod:`benchmarks.bench_vending` and :mod:`benchmarks.profile_vending`. Everything the
gateway does for a sale in production happens here too: API-key authentication, the audit
middleware, the key store (AES-GCM envelope, vending key read through the sale's connection),
uvicorn's HTTP parsing. Only the rate limit is off (``GATEWAY_RATE_LIMIT_VENDOR_PER_MIN=0``):
a load generator is one client sending far more than a till would.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg

from gateway.auth import store as access
from gateway.auth.model import Role
from gateway.db.migrate import apply_migrations
from gateway.dev.services import LOCAL_PG_ADMIN, create_database, free_port, with_database
from gateway.keystore import SoftwareKeyStore
from gateway.keystore.base import VendingKeyId
from gateway.keystore.envelope import Keyring, new_master_key, write_keyring
from gateway.settings import TimescaleMode
from gateway.vending import tariffs, vendors
from tokens.keys import Dkga
from tokens.meter_number import luhn_check_digit

SGC = "123456"
VENDING_KEY = bytes.fromhex("abababababababab")  # the simulated fleet's development key (DKGA02)
TARIFF = {
    "utility": "electricity",
    "customer_class": "domestic",
    "effective_from": "2020-01-01",
    "blocks": [
        {"from": "0", "to": "100", "rate": "2.00"},
        {"from": "100", "to": "400", "rate": "2.50"},
        {"from": "400", "to": "650", "rate": "3.00"},
        {"from": "650", "to": None, "rate": "3.50"},
    ],
}
MQTT_URL = os.environ.get("BENCH_MQTT_URL", "mqtt://127.0.0.1:1883")


def meter_ids(count: int) -> list[str]:
    serials = (f"9{n:09d}" for n in range(count))
    return [serial + str(luhn_check_digit(serial)) for serial in serials]


@dataclass
class Rig:
    """A prepared database and what a client needs to sell on it."""

    database_url: str
    name: str
    directory: Path
    meters: list[str]
    api_keys: list[str]
    """One API key per vendor (``v0`` …), each vendor with a float of 10^8 rand."""
    master_key_file: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateway_database_url: str | None = None
    """The URL the gateways use (default: ``database_url``)."""

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a ``gateway run`` process on this rig."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            GATEWAY_DATABASE_URL=self.gateway_database_url or self.database_url,
            GATEWAY_MQTT_URL=MQTT_URL,
            GATEWAY_MQTT_CLIENT_ID=f"bench-{uuid.uuid4().hex[:10]}",
            GATEWAY_MQTT_TOPIC_PREFIX=f"bench-{self.name}/",
            GATEWAY_MQTT_SESSION_EXPIRY_S="60",
            GATEWAY_MASTER_KEY_FILE=str(self.master_key_file),
            GATEWAY_RATE_LIMIT_VENDOR_PER_MIN="0",
            GATEWAY_LOG_LEVEL="WARNING",
            GATEWAY_TIMESCALEDB="off",
        )
        env.update(extra)
        return env

    def start(self, source: Path | None = None, **extra: str) -> subprocess.Popen[bytes]:
        """``gateway run`` with this rig's environment plus ``extra`` ``GATEWAY_*`` values;
        with ``source``, the gateway's code from that directory (an older revision)."""
        env = self.env(**extra)
        if source is not None:
            env["PYTHONPATH"] = str(source)
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run"],
            env=env,
            cwd=source,
            stdout=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        self.processes.remove(process)


async def _prepare(rig: Rig, vendor_count: int) -> None:
    async with await psycopg.AsyncConnection.connect(rig.database_url) as conn:
        await tariffs.store_tariffs(conn, tariffs.tariffs_from_data({"tariffs": [TARIFF]}))
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO meters (meter_id, utility, payment, verified)"
                " VALUES (%s, 'electricity', 'prepaid', true)",
                [(m,) for m in rig.meters],
            )
            await cur.executemany(
                "INSERT INTO meter_vending (meter_id, sgc, krn, ti, key_type, base_date, ea,"
                " dkga) VALUES (%s, %s, 1, 1, 2, 2014, '07', '02')",
                [(m, SGC) for m in rig.meters],
            )
        await conn.commit()
        for n in range(vendor_count):
            name = f"v{n}"
            await access.create_principal(conn, name=name, role=Role.VENDOR, kind="machine")
            _, key = await access.add_api_key(conn, name, label="bench")
            rig.api_keys.append(key)
            await vendors.top_up(conn, name, Decimal("100000000.00"), actor="bench")
            await conn.commit()
        keystore = SoftwareKeyStore(rig.master_key_file)
        await keystore.import_vending_key(conn, VendingKeyId(SGC, 1, Dkga("02")), VENDING_KEY)
        await conn.commit()


@contextlib.contextmanager
def rig(meters: int, vendor_count: int) -> Iterator[Rig]:
    """A fresh database with ``meters`` prepaid meters and ``vendor_count`` vendors; dropped
    (with any gateway still running on it stopped) at the end."""
    name = f"gw_bench_vend_{uuid.uuid4().hex[:8]}"
    create_database(LOCAL_PG_ADMIN, name)
    url = with_database(LOCAL_PG_ADMIN, name)
    with tempfile.TemporaryDirectory(prefix="bench-vend-") as tmp:
        directory = Path(tmp)
        master = directory / "master.key"
        write_keyring(master, Keyring((new_master_key(),)))
        the_rig = Rig(url, name, directory, meter_ids(meters), [], master)
        if socket_dir := os.environ.get("BENCH_PG_SOCKET_DIR"):
            # the gateway reaches PostgreSQL over its Unix socket instead of loopback TCP
            the_rig.gateway_database_url = f"postgresql://postgres@/{name}?host={socket_dir}"
        try:
            apply_migrations(url, timescale=TimescaleMode.OFF)
            asyncio.run(_prepare(the_rig, vendor_count))
            yield the_rig
        finally:
            for process in list(the_rig.processes):
                the_rig.stop(process)
            with psycopg.connect(LOCAL_PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _requirements(pyproject: Path) -> set[str]:
    names = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {re.split(r"[\s;<>=!~\[]", name, maxsplit=1)[0].lower() for name in names}


def export_revision(revision: str, directory: Path) -> Path:
    """The project's files at git ``revision`` in ``directory``, to run an older gateway.

    Packages this tree depends on and that revision did not are hidden from it (a module that
    raises ImportError, ahead of the virtual environment), so it runs as it was released.
    """
    directory.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", revision], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    added = _requirements(Path("pyproject.toml")) - _requirements(directory / "pyproject.toml")
    for module, distributions in importlib.metadata.packages_distributions().items():
        if any(d.lower() in added for d in distributions):
            (directory / f"{module}.py").write_text(
                f"raise ImportError('{module} is not a dependency of {revision}')\n"
            )
    return directory


def wait_http(port: int, api_key: str, timeout_s: float = 60.0) -> None:
    """Until the vending API answers an authenticated request on ``port``."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {api_key}"}
    while True:
        try:
            response = httpx.get(
                f"http://127.0.0.1:{port}/vend/v1/float", headers=headers, timeout=2
            )
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not answer on port {port}")
        time.sleep(0.2)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time the processes ``pids`` have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def backend_pids(database_url: str, database: str) -> list[int]:
    """Process ids of the PostgreSQL backends connected to ``database`` now (the gateway's
    pooled connections: their CPU time is the database's share of the work)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [int(row[0]) for row in rows]


__all__ = [
    "SGC",
    "Rig",
    "backend_pids",
    "cpu_seconds",
    "export_revision",
    "free_port",
    "meter_ids",
    "process_tree",
    "rig",
    "wait_http",
]
