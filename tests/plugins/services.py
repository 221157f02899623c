"""Real backing services for tests.

* PostgreSQL: the server on 127.0.0.1:5432 when it answers, else an embedded one under
  ``.data/test``. Each test that asks for ``database_url`` gets its own database, cloned from a
  template migrated once per session (per variant), and dropped afterwards.
* Two schema variants, ``plain`` and ``timescale``. Tests marked ``both_variants`` (storage and
  migrations) run on each; other tests use one. The ``timescale`` variant runs on the server
  above when it preloads TimescaleDB, else on a private PostgreSQL cluster started from the
  machine's server binaries where TimescaleDB's files are installed (see ``pgcluster``).
  ``GATEWAY_TIMESCALEDB`` chooses as it does for the gateway: ``off`` runs only ``plain``,
  ``on`` only ``timescale`` (and fails where it cannot), ``auto`` (default) both where possible.
* MQTT: the broker on 127.0.0.1:1883 when it answers, else a private Mosquitto. Each test gets a
  unique ``topic_prefix`` so concurrent tests never see each other's messages.
* ``private_broker``: a Mosquitto of the test's own (fault tests stop and restart it).

Outside CI a test is skipped, with the reason, only when neither a server nor a way to start one
exists. With ``CI`` set (as ``.ci/run`` does) a missing PostgreSQL or broker fails the tests that
need it, and so does a TimescaleDB variant that cannot run although the extension is installed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

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
from gateway.settings import TimescaleMode
from tests.plugins.pgcluster import PrivateCluster, find_timescaledb_install

ROOT = Path(__file__).resolve().parents[2]
PLAIN, TIMESCALE = "plain", "timescale"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip outside CI; in CI a missing service is a failure, never a silent skip."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: the suite needs it)", pytrace=False)
    pytest.skip(reason)


def timescale_mode() -> TimescaleMode:
    value = os.environ.get("GATEWAY_TIMESCALEDB", "auto").strip().lower() or "auto"
    try:
        return TimescaleMode(value)
    except ValueError:
        raise pytest.UsageError(
            f"GATEWAY_TIMESCALEDB must be auto, on or off, not {value!r}"
        ) from None


def selected_variants() -> list[str]:
    mode = timescale_mode()
    if mode is TimescaleMode.OFF:
        return [PLAIN]
    if mode is TimescaleMode.ON:
        return [TIMESCALE]
    return [PLAIN, TIMESCALE]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_variants: run on the plain PostgreSQL schema and on the TimescaleDB one",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_variant" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_variants"
    ):
        metafunc.parametrize("db_variant", selected_variants(), indirect=True)


@dataclass(frozen=True, slots=True)
class DbServer:
    """A PostgreSQL server for one schema variant."""

    variant: str
    admin_url: str

    @property
    def mode(self) -> TimescaleMode:
        """How to migrate for this variant."""
        return TimescaleMode.ON if self.variant == TIMESCALE else TimescaleMode.OFF


@pytest.fixture(scope="session")
def backing() -> Iterator[BackingServices]:
    try:
        services = ensure_services(ROOT / ".data" / "test", database="postgres")
    except ServiceStartError as exc:
        unavailable(f"no PostgreSQL/MQTT available and none could be started: {exc}")
    yield services
    services.close()


def _preloads_timescaledb(admin_url: str) -> bool:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    return row is not None and "timescaledb" in str(row[0])


@pytest.fixture(scope="session")
def timescale_admin_url(backing: BackingServices) -> Iterator[str]:
    """Admin URL of a server with TimescaleDB preloaded (the shared one, or a private one)."""
    if _preloads_timescaledb(backing.admin_url):
        yield backing.admin_url
        return
    install = find_timescaledb_install()
    if install is None:
        reason = (
            "TimescaleDB is not installed here (no timescaledb.so beside a PostgreSQL server "
            "under /usr/lib/postgresql)"
        )
        if timescale_mode() is TimescaleMode.ON:
            pytest.fail(f"GATEWAY_TIMESCALEDB=on but {reason}", pytrace=False)
        pytest.skip(reason)  # nothing to run it on, in CI too: the reason is in the summary
    cluster = PrivateCluster(install)
    try:
        cluster.start()
    except (OSError, RuntimeError) as exc:
        unavailable(f"could not start a private PostgreSQL {install.major} with TimescaleDB: {exc}")
    yield cluster.admin_url
    cluster.stop()


@pytest.fixture(scope="session")
def unpreloaded_admin_url(backing: BackingServices) -> Iterator[str]:
    """Admin URL of a server with TimescaleDB installed but *not* preloaded."""
    with psycopg.connect(backing.admin_url) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
    if available and not _preloads_timescaledb(backing.admin_url):
        yield backing.admin_url
        return
    install = find_timescaledb_install()
    if install is None:
        pytest.skip("TimescaleDB is not installed here")
    cluster = PrivateCluster(install, preload_timescaledb=False)
    try:
        cluster.start()
    except (OSError, RuntimeError) as exc:
        unavailable(f"could not start a private PostgreSQL {install.major}: {exc}")
    yield cluster.admin_url
    cluster.stop()


@pytest.fixture
def db_variant(request: pytest.FixtureRequest) -> str:
    """The schema variant of this test: its parameter, else the one GATEWAY_TIMESCALEDB picks."""
    param = getattr(request, "param", None)
    if param is not None:
        return str(param)
    return TIMESCALE if timescale_mode() is TimescaleMode.ON else PLAIN


@pytest.fixture
def db_server(
    request: pytest.FixtureRequest, db_variant: str, backing: BackingServices
) -> DbServer:
    if db_variant == TIMESCALE:
        return DbServer(TIMESCALE, request.getfixturevalue("timescale_admin_url"))
    return DbServer(PLAIN, backing.admin_url)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _freeze_template(admin_url: str, name: str) -> None:
    """Make ``name`` clonable: no connections to it, TimescaleDB's job scheduler included.

    TimescaleDB keeps a scheduler connected to each database that has the extension, and
    CREATE DATABASE … TEMPLATE refuses a source with sessions. Clones get no scheduler of their
    own, so tests run policies' jobs explicitly, when they choose.
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )


class Templates:
    """One migrated template database per server and variant, made on first use."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, str], str] = {}

    def get(self, server: DbServer) -> str:
        key = (server.admin_url, server.variant)
        if key not in self._made:
            name = f"gw_tmpl_{server.variant}_{uuid.uuid4().hex[:10]}"
            create_database(server.admin_url, name)
            apply_migrations(with_database(server.admin_url, name), timescale=server.mode)
            _freeze_template(server.admin_url, name)
            self._made[key] = name
        return self._made[key]

    def drop_all(self) -> None:
        for (admin_url, _), name in self._made.items():
            try:
                drop_database(admin_url, name)
            except psycopg.OperationalError:
                continue  # its private server is already gone


@pytest.fixture(scope="session")
def templates() -> Iterator[Templates]:
    made = Templates()
    yield made
    made.drop_all()


@pytest.fixture
def template_database(db_server: DbServer, templates: Templates) -> str:
    """Name of a database with every migration applied (this test's variant), a template."""
    return templates.get(db_server)


@pytest.fixture
def database_url(db_server: DbServer, template_database: str) -> Iterator[str]:
    """A migrated database of this test's own."""
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    create_database(db_server.admin_url, name, template=template_database)
    yield with_database(db_server.admin_url, name)
    drop_database(db_server.admin_url, name)


@pytest.fixture
def empty_database_url(db_server: DbServer) -> Iterator[str]:
    """An empty database of this test's own (for migration tests), on this variant's server."""
    name = f"gw_empty_{uuid.uuid4().hex[:12]}"
    create_database(db_server.admin_url, name)
    yield with_database(db_server.admin_url, name)
    drop_database(db_server.admin_url, name)


@pytest.fixture
def admin_url(db_server: DbServer) -> str:
    return db_server.admin_url


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
        unavailable(str(exc))
    yield broker
    broker.stop()
