"""Versioned, idempotent schema migrations.

Migrations live in ``gateway/db/migrations`` as ``NNNN_name.sql`` plus optional variants
``NNNN_name.timescale.sql`` (applied when TimescaleDB is in use) and ``NNNN_name.plain.sql``
(applied on plain PostgreSQL). Each version is applied once, in one transaction, under an
advisory lock so that concurrent ``gateway migrate`` runs are safe; ``schema_migrations`` records
the version, the variant used and a checksum, and a changed checksum of an applied migration is an
error rather than something to re-run.
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
from gateway.settings import TimescaleMode

__all__ = ["Migration", "MigrationReport", "apply_migrations", "load_migrations"]

log = logging.getLogger(__name__)

_LOCK_KEY: Final = 0x6D657465  # "mete": one advisory lock for all migrators of this schema
_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    common: str
    timescale: str
    plain: str

    def sql(self, *, timescale: bool) -> str:
        return self.common + "\n" + (self.timescale if timescale else self.plain)

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


def _use_timescale(conn: psycopg.Connection[tuple[object, ...]], mode: TimescaleMode) -> bool:
    if mode is TimescaleMode.OFF:
        return False
    installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if installed:
        return True
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if available:
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.Error as exc:
            if mode is TimescaleMode.ON:
                raise MigrationError(f"cannot enable TimescaleDB: {exc}") from exc
            log.warning("TimescaleDB is installed but cannot be enabled (%s); using plain SQL", exc)
            return False
        return True
    if mode is TimescaleMode.ON:
        raise MigrationError("GATEWAY_TIMESCALEDB=on but the timescaledb extension is missing")
    return False


def apply_migrations(
    conninfo: str,
    *,
    timescale: TimescaleMode = TimescaleMode.AUTO,
    migrations: list[Migration] | None = None,
) -> MigrationReport:
    """Bring the database at ``conninfo`` up to date; safe to run repeatedly and concurrently."""
    todo = migrations if migrations is not None else load_migrations()
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                return _apply_locked(conn, todo, timescale)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {exc}") from exc


def _apply_locked(
    conn: psycopg.Connection[tuple[object, ...]],
    todo: list[Migration],
    mode: TimescaleMode,
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
        use_ts = _use_timescale(conn, mode)
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
            conn.execute(migration.sql(timescale=use_ts).encode())
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
