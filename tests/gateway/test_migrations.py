"""Schema migrations on the real PostgreSQL, with and without TimescaleDB."""

from __future__ import annotations

import re
import threading
from dataclasses import replace

import psycopg
import pytest

from gateway.db.migrate import apply_migrations, load_migrations
from gateway.errors import MigrationError
from gateway.settings import TimescaleMode


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_fresh_database_gets_the_schema_and_reruns_are_no_ops(empty_database_url: str) -> None:
    first = apply_migrations(empty_database_url)
    assert first.applied == tuple(m.version for m in load_migrations())
    assert {"meters", "reading_data", "readings", "dead_letters", "meter_events"} <= tables(
        empty_database_url
    )
    second = apply_migrations(empty_database_url)
    assert second.applied == () and second.already == first.applied


def test_plain_postgresql_path_is_recorded(empty_database_url: str) -> None:
    report = apply_migrations(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        variants = {r[0] for r in conn.execute("SELECT variant FROM schema_migrations")}
        has_ts = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
    if has_ts:
        pytest.skip("TimescaleDB is installed here; the plain path is covered elsewhere")
    assert report.timescale is False and variants == {"plain"}


def test_concurrent_migrators_apply_each_version_once(empty_database_url: str) -> None:
    errors: list[BaseException] = []
    reports = []

    def migrate() -> None:
        try:
            reports.append(apply_migrations(empty_database_url))
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
    apply_migrations(empty_database_url)
    edited = [replace(m, common=m.common + "\n-- edited") for m in load_migrations()]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(empty_database_url, migrations=edited)


def test_a_plain_schema_stays_plain(empty_database_url: str) -> None:
    apply_migrations(empty_database_url, timescale=TimescaleMode.OFF)
    with pytest.raises(MigrationError, match="created without TimescaleDB"):
        apply_migrations(empty_database_url, timescale=TimescaleMode.ON)


def test_requiring_timescaledb_without_it_fails_clearly(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        if conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name='timescaledb'"
        ).fetchone():
            pytest.skip("TimescaleDB is installed here")
    with pytest.raises(MigrationError, match="timescaledb"):
        apply_migrations(empty_database_url, timescale=TimescaleMode.ON)


def _as_plpgsql_body(script: str) -> str:
    """Statements of a migration script as PL/pgSQL statements (SELECT f() → PERFORM f())."""
    without_comments = re.sub(r"--[^\n]*", "", script)
    statements = [s.strip() for s in without_comments.split(";") if s.strip()]
    return "\n".join(re.sub(r"^SELECT\b", "PERFORM", s) + ";" for s in statements)


@pytest.mark.parametrize("variant", ["timescale", "plain"])
def test_variant_sql_is_valid_postgresql(empty_database_url: str, variant: str) -> None:
    """TimescaleDB cannot be installed here, so its SQL is at least parsed by the server.

    PL/pgSQL compiles (parses) every statement of a function body at CREATE FUNCTION time
    without resolving function names; a syntax error in the TimescaleDB variant fails here.
    """
    for migration in load_migrations():
        script = migration.timescale if variant == "timescale" else migration.plain
        if not script.strip():
            continue
        body = _as_plpgsql_body(script)
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
