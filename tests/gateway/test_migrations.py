"""Schema migrations on the real PostgreSQL, plain and with TimescaleDB (both variants)."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from gateway.db.migrate import apply_migrations, load_migrations
from gateway.dev.services import create_database, with_database
from gateway.errors import MigrationError
from gateway.settings import TimescaleMode
from tests.plugins.services import TIMESCALE, DbServer, drop_database

both_variants = pytest.mark.both_variants


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


@both_variants
def test_fresh_database_gets_the_schema_and_reruns_are_no_ops(
    empty_database_url: str, db_server: DbServer
) -> None:
    first = apply_migrations(empty_database_url, timescale=db_server.mode)
    assert first.applied == tuple(m.version for m in load_migrations())
    assert first.timescale is (db_server.variant == TIMESCALE)
    assert {"meters", "reading_data", "readings", "dead_letters", "meter_events"} <= tables(
        empty_database_url
    )
    second = apply_migrations(empty_database_url, timescale=db_server.mode)
    assert second.applied == () and second.already == first.applied
    with psycopg.connect(empty_database_url) as conn:
        variants = {r[0] for r in conn.execute("SELECT variant FROM schema_migrations")}
        zone = conn.execute("SELECT time_zone FROM deployment_settings").fetchall()
    assert variants == {db_server.variant}
    assert zone == [("Africa/Johannesburg",)]


@both_variants
def test_the_timescale_schema_is_really_timescale(database_url: str, db_server: DbServer) -> None:
    with psycopg.connect(database_url) as conn:
        if db_server.variant != TIMESCALE:
            assert (
                conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
                is None
            )
            kinds = dict(
                conn.execute(
                    "SELECT relname, relkind FROM pg_class WHERE relname IN"
                    " ('readings_hourly', 'readings_daily')"
                ).fetchall()
            )
            assert kinds == {"readings_hourly": "v", "readings_daily": "v"}
            return
        hypertables = conn.execute(
            "SELECT hypertable_name, compression_enabled"
            " FROM timescaledb_information.hypertables ORDER BY 1"
        ).fetchall()
        aggregates = conn.execute(
            "SELECT view_name, materialized_only"
            " FROM timescaledb_information.continuous_aggregates ORDER BY 1"
        ).fetchall()
        jobs = conn.execute(
            "SELECT proc_name, coalesce(hypertable_name, ''), config"
            " FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY 1, 2"
        ).fetchall()
    assert ("reading_data", True) in hypertables
    assert aggregates == [("readings_daily", False), ("readings_hourly", False)]
    procs = [(name, cfg) for name, _, cfg in jobs]
    assert [p for p, _ in procs].count("policy_refresh_continuous_aggregate") == 2
    compression = next(cfg for p, cfg in procs if p == "policy_compression")
    retention = next(cfg for p, cfg in procs if p == "policy_retention")
    assert compression["compress_after"] == "7 days"
    assert retention["drop_after"] == "1095 days"


@both_variants
def test_concurrent_migrators_apply_each_version_once(
    empty_database_url: str, db_server: DbServer
) -> None:
    errors: list[BaseException] = []
    reports = []

    def migrate() -> None:
        try:
            reports.append(apply_migrations(empty_database_url, timescale=db_server.mode))
        except BaseException as exc:  # collected and re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = [v for r in reports for v in r.applied]
    assert sorted(applied) == [m.version for m in load_migrations()]


def test_an_edited_applied_migration_is_refused(empty_database_url: str) -> None:
    apply_migrations(empty_database_url, timescale=TimescaleMode.OFF)
    edited = [replace(m, common=m.common + "\n-- edited") for m in load_migrations()]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(empty_database_url, migrations=edited)


@both_variants
def test_a_plain_schema_stays_plain(empty_database_url: str) -> None:
    apply_migrations(empty_database_url, timescale=TimescaleMode.OFF)
    with pytest.raises(MigrationError, match="created without TimescaleDB"):
        apply_migrations(empty_database_url, timescale=TimescaleMode.ON)


def test_the_deployment_time_zone_is_fixed_at_creation(empty_database_url: str) -> None:
    apply_migrations(empty_database_url, timescale=TimescaleMode.OFF, time_zone="Europe/Berlin")
    with pytest.raises(MigrationError, match="GATEWAY_DEPLOYMENT_TIME_ZONE=Europe/Berlin"):
        apply_migrations(empty_database_url, timescale=TimescaleMode.OFF)
    with pytest.raises(MigrationError, match="time zone"):
        apply_migrations(empty_database_url, time_zone="Mars/Olympus_Mons")
    again = apply_migrations(
        empty_database_url, timescale=TimescaleMode.OFF, time_zone="Europe/Berlin"
    )
    assert again.applied == ()


# --- TimescaleDB installed but not preloaded (the usual state right after installing it) ------


@pytest.fixture
def unpreloaded_url(unpreloaded_admin_url: str) -> Iterator[str]:
    """An empty database on a server with TimescaleDB installed but not preloaded."""
    name = f"gw_nopre_{uuid.uuid4().hex[:12]}"
    create_database(unpreloaded_admin_url, name)
    yield with_database(unpreloaded_admin_url, name)
    drop_database(unpreloaded_admin_url, name)


def test_auto_falls_back_to_plain_with_one_warning_when_not_preloaded(
    unpreloaded_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.db.migrate"):
        report = apply_migrations(unpreloaded_url, timescale=TimescaleMode.AUTO)
    assert report.timescale is False
    assert report.applied == tuple(m.version for m in load_migrations())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "shared_preload_libraries = 'timescaledb'" in warnings[0]
    assert "GATEWAY_TIMESCALEDB=off" in warnings[0]
    with psycopg.connect(unpreloaded_url) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (0,)


def test_on_is_an_error_with_the_same_advice_when_not_preloaded(unpreloaded_url: str) -> None:
    with pytest.raises(MigrationError) as caught:
        apply_migrations(unpreloaded_url, timescale=TimescaleMode.ON)
    assert "not in shared_preload_libraries" in str(caught.value)
    assert "shared_preload_libraries = 'timescaledb'" in str(caught.value)
    with psycopg.connect(unpreloaded_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)


# --- Where TimescaleDB cannot run, its SQL is at least parsed ----------------------------------


def _as_plpgsql_body(script: str) -> str:
    """Statements of a migration script as PL/pgSQL statements (SELECT f() → PERFORM f())."""
    without_comments = re.sub(r"--[^\n]*", "", script)
    statements = [s.strip() for s in without_comments.split(";") if s.strip()]
    return "\n".join(re.sub(r"^SELECT\b", "PERFORM", s) + ";" for s in statements)


@pytest.mark.parametrize("variant", ["timescale", "plain"])
def test_variant_sql_is_valid_postgresql(empty_database_url: str, variant: str) -> None:
    """PL/pgSQL parses every statement of a function body without resolving function names,
    so a syntax error in either variant fails here even on a server without TimescaleDB."""
    for migration in load_migrations():
        if not (migration.timescale if variant == "timescale" else migration.plain).strip():
            continue
        script = migration.sql(timescale=variant == "timescale")
        body = _as_plpgsql_body(script.replace(migration.common, "", 1))
        with psycopg.connect(empty_database_url, autocommit=True) as conn:
            conn.execute(
                f"CREATE FUNCTION pg_temp.check_{variant}_{migration.version}() RETURNS void"  # type: ignore[arg-type]
                f" LANGUAGE plpgsql AS $body$ BEGIN IF false THEN {body} END IF; END $body$"
            )


def test_the_syntax_check_catches_errors(empty_database_url: str) -> None:
    body = _as_plpgsql_body("SELECT create_hypertable('x', 'ts' chunk_time_interval => 1);")
    with (
        psycopg.connect(empty_database_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.SyntaxError),
    ):
        conn.execute(
            "CREATE FUNCTION pg_temp.broken() RETURNS void LANGUAGE plpgsql AS"  # type: ignore[arg-type]
            f" $body$ BEGIN IF false THEN {body} END IF; END $body$"
        )
