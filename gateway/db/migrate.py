"""Versioned, idempotent schema migrations.

Migrations live in ``gateway/db/migrations`` as ``NNNN_name.sql`` plus optional variants
``NNNN_name.timescale.sql`` (applied when TimescaleDB is in use) and ``NNNN_name.plain.sql``
(applied on plain PostgreSQL). Each version is applied once, in one transaction, under an
advisory lock so that concurrent ``gateway migrate`` runs are safe; ``schema_migrations`` records
the version, the variant used and a checksum, and a changed checksum of an applied migration is an
error rather than something to re-run.

Parameters. A migration may use ``:'deployment_time_zone'`` (psql's quoted-variable syntax),
replaced by the quoted name of the deployment time zone (``GATEWAY_DEPLOYMENT_TIME_ZONE``) when
it is applied: continuous aggregates need the zone as a constant in their definition. The zone
is recorded in ``deployment_settings``; migrating later with another zone is refused instead of
silently leaving the daily buckets in the old one.

TimescaleDB. In ``auto`` mode the extension is used when it is created already, or when it is
installed *and* preloaded (``shared_preload_libraries``): ``CREATE EXTENSION`` without the
preload fails with a FATAL error that closes the session, so it is never tried then, and the
attempt itself runs on a throwaway connection. Installed but not preloaded gives one warning
saying how to enable it; with ``on`` the same advice is the error.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import psycopg

from gateway.errors import MigrationError
from gateway.settings import DEFAULT_DEPLOYMENT_TIME_ZONE, TimescaleMode, check_time_zone

__all__ = [
    "ENABLE_TIMESCALEDB_ADVICE",
    "Migration",
    "MigrationReport",
    "apply_migrations",
    "load_migrations",
]

log = logging.getLogger(__name__)

_LOCK_KEY: Final = 0x6D657465  # "mete": one advisory lock for all migrators of this schema
_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")
_TIME_ZONE_PARAM: Final = ":'deployment_time_zone'"

ENABLE_TIMESCALEDB_ADVICE: Final = (
    "to enable it, add timescaledb to shared_preload_libraries in postgresql.conf "
    "(shared_preload_libraries = 'timescaledb', or ALTER SYSTEM SET shared_preload_libraries = "
    "'timescaledb') and restart PostgreSQL; set GATEWAY_TIMESCALEDB=off to use plain "
    "PostgreSQL without this warning"
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    common: str
    timescale: str
    plain: str

    def sql(self, *, timescale: bool, time_zone: str = DEFAULT_DEPLOYMENT_TIME_ZONE) -> str:
        """The script to run, parameters substituted (``time_zone`` must be a checked name)."""
        script = self.common + "\n" + (self.timescale if timescale else self.plain)
        return script.replace(_TIME_ZONE_PARAM, _quote_literal(time_zone))

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for part in (self.common, self.timescale, self.plain):
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationReport:
    timescale: bool
    applied: tuple[int, ...]
    already: tuple[int, ...]


def load_migrations() -> list[Migration]:
    """The packaged migrations, in version order."""
    folder = resources.files("gateway.db") / "migrations"
    files = {entry.name: entry.read_text(encoding="utf-8") for entry in folder.iterdir()}
    migrations = []
    for filename in sorted(files):
        match = _NAME.fullmatch(filename)
        if match is None:
            continue
        stem = filename.removesuffix(".sql")
        migrations.append(
            Migration(
                version=int(match["version"]),
                name=match["name"],
                common=files[filename],
                timescale=files.get(f"{stem}.timescale.sql", ""),
                plain=files.get(f"{stem}.plain.sql", ""),
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return migrations


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _preloaded(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    libraries = str(row[0]) if row else ""
    names = {part.strip().strip('"').rsplit("/", 1)[-1] for part in libraries.split(",")}
    return "timescaledb" in names


def _use_timescale(
    conn: psycopg.Connection[tuple[object, ...]], conninfo: str, mode: TimescaleMode
) -> bool:
    if mode is TimescaleMode.OFF:
        return False
    installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if installed:
        return True
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if not available:
        if mode is TimescaleMode.ON:
            raise MigrationError(
                "GATEWAY_TIMESCALEDB=on but the timescaledb extension is not installed "
                "on the database server"
            )
        log.info("TimescaleDB is not installed on the database server; using plain SQL")
        return False
    if not _preloaded(conn):
        problem = "TimescaleDB is installed but not in shared_preload_libraries"
        if mode is TimescaleMode.ON:
            raise MigrationError(
                f"GATEWAY_TIMESCALEDB=on but {problem}; {ENABLE_TIMESCALEDB_ADVICE}"
            )
        log.warning("%s, so the schema uses plain SQL; %s", problem, ENABLE_TIMESCALEDB_ADVICE)
        return False
    # A failure here must not take the migrating session (and its advisory lock) with it.
    try:
        with psycopg.connect(conninfo, autocommit=True) as attempt:
            attempt.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if mode is TimescaleMode.ON:
            raise MigrationError(f"cannot enable TimescaleDB: {reason}") from exc
        log.warning(
            "TimescaleDB is installed and preloaded but cannot be enabled (%s); using plain "
            "SQL. The migrating role needs the right to CREATE EXTENSION timescaledb, or create "
            "it beforehand",
            reason,
        )
        return False
    return True


def apply_migrations(
    conninfo: str,
    *,
    timescale: TimescaleMode = TimescaleMode.AUTO,
    time_zone: str = DEFAULT_DEPLOYMENT_TIME_ZONE,
    migrations: list[Migration] | None = None,
) -> MigrationReport:
    """Bring the database at ``conninfo`` up to date; safe to run repeatedly and concurrently.

    ``time_zone`` is the deployment time zone (an IANA name) that daily buckets use.
    """
    todo = migrations if migrations is not None else load_migrations()
    try:
        zone = check_time_zone(time_zone)
    except ValueError as exc:
        raise MigrationError(str(exc)) from None
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                return _apply_locked(conn, conninfo, todo, timescale, zone)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {exc}") from exc


def _check_zone(conn: psycopg.Connection[tuple[object, ...]], zone: str) -> None:
    known = conn.execute("SELECT 1 FROM pg_timezone_names WHERE name = %s", (zone,)).fetchone()
    if not known:
        raise MigrationError(f"the database server does not know the time zone {zone!r}")
    has_table = conn.execute("SELECT to_regclass('deployment_settings') IS NOT NULL").fetchone()
    if not (has_table and has_table[0]):
        return
    row = conn.execute("SELECT time_zone FROM deployment_settings").fetchone()
    if row is not None and row[0] != zone:
        raise MigrationError(
            f"this database's daily buckets use the time zone {row[0]!r}, not {zone!r}: set "
            f"GATEWAY_DEPLOYMENT_TIME_ZONE={row[0]} (a deployment keeps the zone it was "
            "created with)"
        )


def _apply_locked(
    conn: psycopg.Connection[tuple[object, ...]],
    conninfo: str,
    todo: list[Migration],
    mode: TimescaleMode,
    zone: str,
) -> MigrationReport:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            variant    text NOT NULL CHECK (variant IN ('timescale', 'plain')),
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    done = {
        int(str(v)): str(c)
        for v, c in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    }
    recorded = {str(v) for (v,) in conn.execute("SELECT DISTINCT variant FROM schema_migrations")}
    if recorded:
        # A schema keeps the variant it started with: TimescaleDB appearing (or going) later
        # must not mix hypertable SQL into a plain schema or the reverse.
        use_ts = recorded == {"timescale"}
        if mode is TimescaleMode.ON and not use_ts:
            raise MigrationError(
                "GATEWAY_TIMESCALEDB=on but this schema was created without TimescaleDB"
            )
    else:
        use_ts = _use_timescale(conn, conninfo, mode)
    _check_zone(conn, zone)
    applied: list[int] = []
    already: list[int] = []
    for migration in todo:
        if migration.version in done:
            if done[migration.version] != migration.checksum():
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was "
                    "applied; add a new migration instead of editing an applied one"
                )
            already.append(migration.version)
            continue
        with conn.transaction():
            conn.execute(migration.sql(timescale=use_ts, time_zone=zone).encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, variant, checksum)"
                " VALUES (%s, %s, %s, %s)",
                (
                    migration.version,
                    migration.name,
                    "timescale" if use_ts else "plain",
                    migration.checksum(),
                ),
            )
        log.info(
            "applied migration %04d_%s",
            migration.version,
            migration.name,
            extra={"variant": "timescale" if use_ts else "plain"},
        )
        applied.append(migration.version)
    return MigrationReport(timescale=use_ts, applied=tuple(applied), already=tuple(already))
