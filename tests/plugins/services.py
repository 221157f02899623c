"""Real backing services for tests.

* PostgreSQL: the server on 127.0.0.1:5432 when it answers, else an embedded one under
  ``.data/test``. Each test that asks for ``database_url`` gets its own database, cloned from a
  template migrated once per session, and dropped afterwards.
* MQTT: the broker on 127.0.0.1:1883 when it answers, else a private Mosquitto. Each test gets a
  unique ``topic_prefix`` so concurrent tests never see each other's messages.
* ``private_broker``: a Mosquitto of the test's own (fault tests stop and restart it).

A test is skipped, with the reason, only when neither a server nor a way to start one exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gateway.db.migrate import apply_migrations
from gateway.dev.services import (
    BackingServices,
    MosquittoProcess,
    create_database,
    ensure_services,
    start_mosquitto,
    with_database,
)
from gateway.errors import ServiceStartError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def backing() -> Iterator[BackingServices]:
    try:
        services = ensure_services(ROOT / ".data" / "test", database="postgres")
    except ServiceStartError as exc:
        pytest.skip(f"no PostgreSQL/MQTT available and none could be started: {exc}")
    yield services
    services.close()


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_database(backing: BackingServices) -> Iterator[str]:
    """Name of a database with every migration applied, used as a template."""
    name = f"gw_tmpl_{uuid.uuid4().hex[:10]}"
    create_database(backing.admin_url, name)
    apply_migrations(with_database(backing.admin_url, name))
    yield name
    drop_database(backing.admin_url, name)


@pytest.fixture
def database_url(backing: BackingServices, template_database: str) -> Iterator[str]:
    """A migrated database of this test's own."""
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    create_database(backing.admin_url, name, template=template_database)
    yield with_database(backing.admin_url, name)
    drop_database(backing.admin_url, name)


@pytest.fixture
def empty_database_url(backing: BackingServices) -> Iterator[str]:
    """An empty database of this test's own (for migration tests)."""
    name = f"gw_empty_{uuid.uuid4().hex[:12]}"
    create_database(backing.admin_url, name)
    yield with_database(backing.admin_url, name)
    drop_database(backing.admin_url, name)


@pytest.fixture
def admin_url(backing: BackingServices) -> str:
    return backing.admin_url


@pytest.fixture(scope="session")
def mqtt_url(backing: BackingServices) -> str:
    return backing.mqtt_url


@pytest.fixture
def topic_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    try:
        broker = start_mosquitto(tmp_path / "mosquitto")
    except ServiceStartError as exc:
        pytest.skip(str(exc))
    yield broker
    broker.stop()
