"""Billing export throughput and memory, beside a plain COPY of the same readings.

Run:  .venv/bin/python -m benchmarks.bench_billing [--meters N ...] [--format csv|parquet]

For each fleet size N (default 500 and 2000) it builds a database of its own holding a month
of 15-minute import-register readings for N electricity meters (November 2026, one day either
side), then, in the same run:

1. **copy**: ``COPY (SELECT … the readings the export reads, in meter order) TO STDOUT`` —
   the database's cost of handing those rows out, the baseline;
2. **export**: ``gateway export billing --period 2026-11`` in a child process, timed, with
   the child's peak resident memory (``wait4`` rusage) — the whole feature, written to a file.

Figures are printed as ratios to the baseline; peak RSS that does not grow with N is what
"bounded memory" means here (the export streams through a server-side cursor in batches).

The readings are generated in the server (``INSERT … SELECT`` from ``generate_series``) into
the migrated ``reading_data`` with its key and indexes dropped, which are then built again
from their own definitions (as the migrations made them), followed by ``VACUUM ANALYZE``.
With ``--unlogged`` the table is also made UNLOGGED for the load (no WAL: reads are the same;
the database is dropped at the end anyway). Build times are printed too. Point ``--admin-url``
at a private cluster for large fleets, to keep the load's I/O and checkpoints off a shared
server. A large fleet needs about 130 bytes of disk per reading (table and key), plus as much
again for the key's sort while it is built.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from gateway.billing.verify import check_file
from gateway.db.migrate import apply_migrations
from gateway.dev.services import LOCAL_PG_ADMIN, create_database, with_database

BIN = Path(sys.executable).parent
START = "2026-10-31 00:00+02"
STOP = "2026-12-02 00:00+02"


def _drop_indexes(conn: psycopg.Connection) -> list[str]:
    """Drop the readings' key and indexes; the statements that create them again."""
    rows = conn.execute(
        "SELECT c.conname, pg_get_constraintdef(c.oid), i.indexrelid::regclass::text,"
        " pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid"
        " WHERE i.indrelid = 'reading_data'::regclass"
    ).fetchall()
    again = []
    for constraint, constraint_def, index, index_def in rows:
        if constraint is not None:
            conn.execute(f'ALTER TABLE reading_data DROP CONSTRAINT "{constraint}"')
            again.append(f'ALTER TABLE reading_data ADD CONSTRAINT "{constraint}" {constraint_def}')
        else:
            conn.execute(f"DROP INDEX {index}")
            again.append(index_def)
    return again


def build(admin_url: str, meters: int, *, unlogged: bool = False) -> tuple[str, float]:
    """A migrated database with ``meters`` meters' month of readings; its URL and build time."""
    started = time.perf_counter()
    name = f"gw_bench_billing_{uuid.uuid4().hex[:8]}"
    create_database(admin_url, name)
    url = with_database(admin_url, name)
    try:
        apply_migrations(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO meters (meter_id, utility, payment, verified, time_zone)"
                " SELECT 'B' || lpad(i::text, 6, '0'), 'electricity', 'postpaid', true,"
                " 'Africa/Johannesburg' FROM generate_series(1, %s) i",
                (meters,),
            )
            # Indexes are built once, after the load, rather than maintained row by row.
            indexes = _drop_indexes(conn)
            if unlogged:
                conn.execute("ALTER TABLE reading_data SET UNLOGGED")
            conn.execute(
                "INSERT INTO reading_data (meter_id, channel, ts, value)"
                " SELECT 'B' || lpad(i::text, 6, '0'), '1.8.0', ts,"
                " i * 10.0 + extract(epoch FROM ts - %s::timestamptz) / 3600 * 0.3"
                " FROM generate_series(1, %s) i CROSS JOIN LATERAL"
                " generate_series(%s::timestamptz, %s::timestamptz, interval '15 minutes') ts",
                (START, meters, START, STOP),
            )
            conn.execute("SET maintenance_work_mem = '512MB'")
            for statement in indexes:
                conn.execute(statement)  # type: ignore[call-overload]
            conn.execute("VACUUM ANALYZE reading_data")
            conn.execute("ANALYZE meters")
    except BaseException:
        drop(admin_url, url)
        raise
    return url, time.perf_counter() - started


def drop(admin_url: str, url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def copy_baseline(url: str) -> tuple[float, int, int]:
    """Seconds, rows and bytes of a plain COPY of the readings the export reads."""
    started = time.perf_counter()
    rows = size = 0
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY (SELECT meter_id, channel, ts, value FROM reading_data"
            " WHERE ts >= '2026-10-31 00:00+02' AND ts <= '2026-12-02 00:00+02'"
            " ORDER BY meter_id, channel, ts) TO STDOUT"
        ) as copy,
    ):
        for block in copy:
            size += len(block)
            rows += bytes(block).count(b"\n")
    return time.perf_counter() - started, rows, size


def export_child(url: str, out: Path, file_format: str) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of ``gateway export billing`` in a child process."""
    env = {**os.environ, "GATEWAY_DATABASE_URL": url, "GATEWAY_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            str(BIN / "gateway"),
            "export",
            "billing",
            "--period",
            "2026-11",
            "--format",
            file_format,
            "--out",
            str(out),
        ],
        env=env,
    )
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"export failed with exit code {child.returncode}")
    return elapsed, usage.ru_maxrss


def idle_child_rss() -> int:
    """Peak RSS (KiB) of a child that only imports the export code: the interpreter's floor."""
    child = subprocess.Popen([sys.executable, "-c", "import gateway.billing.export, gateway.cli"])
    _, _, usage = os.wait4(child.pid, 0)
    return usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", LOCAL_PG_ADMIN))
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    parser.add_argument(
        "--unlogged", action="store_true", help="load the readings into an UNLOGGED table"
    )
    args = parser.parse_args()
    floor = idle_child_rss()
    print(f"interpreter + imports alone: peak RSS {floor / 1024:.0f} MiB")
    print(
        f"{'meters':>7} {'readings':>10} {'build s':>8} {'copy s':>7} {'copy rows/s':>12}"
        f" {'export s':>8} {'rows/s':>8} {'readings/s':>11} {'export/copy':>11} {'peak MiB':>9}"
    )
    for meters in args.meters:
        url, build_s = build(args.admin_url, meters, unlogged=args.unlogged)
        try:
            copy_s, readings, _ = copy_baseline(url)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / f"billing.{args.format}"
                export_s, rss = export_child(url, out, args.format)
                exported = check_file(out).rows  # the whole file: trailer or footer checked
                assert exported == meters, (exported, meters)  # one row per meter
            print(
                f"{meters:>7} {readings:>10} {build_s:>8.1f} {copy_s:>7.2f}"
                f" {readings / copy_s:>12.0f} {export_s:>8.2f} {exported / export_s:>8.0f}"
                f" {readings / export_s:>11.0f} {export_s / copy_s:>11.2f} {rss / 1024:>9.0f}",
                flush=True,
            )
        finally:
            if not args.keep:
                drop(args.admin_url, url)


if __name__ == "__main__":
    main()
