"""Vending throughput and latency of the real gateway, each beside a baseline of the same run.

Run:  .venv/bin/python -m benchmarks.bench_vending [--seconds 10] [--workers 2] [--rounds 2]
          [--rate R] [--connections 32] [--vendors 32] [--fleet-meters 2000 --fleet-speed 120]

Everything runs in one go on one machine (shared, noisy: the load average of each phase is
printed, and the variants alternate for ``--rounds`` rounds, medians shown), on a fresh database
with API-key vendors and an encrypted key store (:mod:`benchmarks.vending_rig`):

1. **ceiling**: one sale's SQL through ``pgbench`` (:mod:`benchmarks.vending_ceiling`): what
   PostgreSQL alone sustains for the work of a sale.
2. For 1 and ``--workers`` API processes (``GATEWAY_PARTS=http``, one port,
   ``GATEWAY_HTTP_REUSE_PORT``):
   * **trivial**: ``GET /vend/v1/float`` saturated with ``wrk``: API-key check and one read,
     the floor any authenticated request pays;
   * **saturated**: credit vends (a fresh ``request_id`` each) saturated with ``wrk``: sales/s,
     latency, and the CPU the gateway processes and their database backends spent per sale;
   * **paced**: credit vends offered open loop at ``--rate`` per second (default: half the
     lower of the two saturated rates, stated in the output): p50 / p95 / p99.
3. **beside ingest**: with ``--workers`` API processes, paced vends at the same rate without
   and then with an ingest-only gateway (``GATEWAY_PARTS=ingest``) taking the simulated fleet's
   telemetry (``firmware-sim run --meters --speed``); the readings stored per second are shown.

Ratios in ``ratios`` compare figures of the same run. ``BENCH_PG_SOCKET_DIR=/var/run/postgresql``
makes the gateways reach PostgreSQL over its Unix socket instead of loopback TCP.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from benchmarks.vending_ceiling import pgbench_ceiling, prepare_ceiling
from benchmarks.vending_load import LoadResult, paced, saturate
from benchmarks.vending_rig import (
    Rig,
    backend_pids,
    cpu_seconds,
    free_port,
    process_tree,
    rig,
    wait_http,
)


def scalar(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        return int(row[0]) if row and row[0] is not None else 0


def load_figures(load: LoadResult) -> dict[str, float]:
    return {
        "per_s": round(load.per_s, 1),
        "p50_ms": round(load.p50_ms, 1),
        "p95_ms": round(load.p95_ms, 1),
        "p99_ms": round(load.p99_ms, 1),
        "non_200": load.non_200,
        "errors": load.errors,
    }


@contextlib.contextmanager
def api_processes(the_rig: Rig, count: int) -> Iterator[tuple[int, list[int]]]:
    """``count`` API-only gateways on one port; (port, their pids)."""
    port = free_port()
    processes = [
        the_rig.start(
            GATEWAY_PARTS="http", GATEWAY_HTTP_PORT=str(port), GATEWAY_HTTP_REUSE_PORT="true"
        )
        for _ in range(count)
    ]
    try:
        wait_http(port, the_rig.api_keys[0])
        time.sleep(1.0)  # every process up, not only the first to answer
        yield port, [p.pid for p in processes]
    finally:
        for process in processes:
            the_rig.stop(process)


def with_cpu(the_rig: Rig, pids: list[int], run: Any) -> tuple[Any, float, float]:
    """``run()``, and the CPU seconds the gateway processes and their backends spent on it."""
    gateway = [p for pid in pids for p in process_tree(pid)]
    backends = backend_pids(the_rig.database_url, the_rig.name)
    before = cpu_seconds(gateway), cpu_seconds(backends)
    result = run()
    return result, cpu_seconds(gateway) - before[0], cpu_seconds(backends) - before[1]


def saturated(the_rig: Rig, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """``workers`` API processes saturated with the trivial request, then with credit vends."""
    keys, meters, sold = the_rig.api_keys, the_rig.meters, "SELECT count(*) FROM sales"
    figures: dict[str, Any] = {"load_average": os.getloadavg()[0]}
    with api_processes(the_rig, workers) as (port, pids):
        saturate(port, meters, keys, connections=args.connections, seconds=2)  # warm up
        trivial, cpu_gw, _ = with_cpu(
            the_rig,
            pids,
            lambda: saturate(
                port, meters, keys, connections=args.connections, seconds=args.seconds,
                path="/vend/v1/float",
            ),
        )  # fmt: skip
        figures["trivial_per_s"] = round(trivial.per_s, 1)
        figures["trivial_gateway_cpu_ms"] = round(1000 * cpu_gw / max(1, trivial.requests), 3)
        before = scalar(the_rig.database_url, sold)
        credit, cpu_gw, cpu_db = with_cpu(
            the_rig,
            pids,
            lambda: saturate(
                port, meters, keys, connections=args.connections, seconds=args.seconds
            ),
        )
        sales = scalar(the_rig.database_url, sold) - before
        figures.update({f"sales_{k}": v for k, v in load_figures(credit).items()})
        figures["gateway_cpu_ms_per_sale"] = round(1000 * cpu_gw / max(1, sales), 3)
        figures["db_cpu_ms_per_sale"] = round(1000 * cpu_db / max(1, sales), 3)
    return figures


def paced_run(the_rig: Rig, workers: int, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """Credit vends offered open loop at ``rate`` to ``workers`` API processes."""
    keys, meters = the_rig.api_keys, the_rig.meters
    with api_processes(the_rig, workers) as (port, _):
        saturate(port, meters, keys, connections=args.connections, seconds=2)  # warm up
        load_average = os.getloadavg()[0]
        figures = load_figures(paced(port, meters, keys, rate=rate, seconds=args.seconds))
    return {"load_average": load_average, **figures}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds (the rounds themselves beside it)."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
    summary: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    summary["rounds"] = runs
    return summary


def beside_ingest(the_rig: Rig, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """Paced vends without, then with, the simulated fleet's telemetry being ingested."""
    keys, meters = the_rig.api_keys, the_rig.meters
    readings = "SELECT count(*) FROM reading_data"
    result: dict[str, Any] = {"offered_per_s": rate}
    with api_processes(the_rig, args.workers) as (port, _):
        saturate(port, meters, keys, connections=args.connections, seconds=2)
        load_average = os.getloadavg()[0]
        without = paced(port, meters, keys, rate=rate, seconds=args.seconds)
        result["without"] = {"load_average": load_average, **load_figures(without)}
        ingest = the_rig.start(GATEWAY_PARTS="ingest", GATEWAY_HTTP_PORT=str(free_port()))
        with tempfile.TemporaryDirectory() as tmp:
            fleet = subprocess.Popen(
                [os.path.join(os.path.dirname(sys.executable), "firmware-sim"), "run",
                 "--meters", str(args.fleet_meters), "--speed", str(args.fleet_speed),
                 "--broker", "mqtt://127.0.0.1:1883", "--prefix", f"bench-{the_rig.name}/",
                 "--progress-every", "0", "--data-dir", tmp,
                 "--duration", str(args.seconds + 12)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                time.sleep(6)  # the fleet connected and the ingest gateway committing
                stored = scalar(the_rig.database_url, readings)
                load_average = os.getloadavg()[0]
                started = time.monotonic()
                load = paced(port, meters, keys, rate=rate, seconds=args.seconds)
                elapsed = time.monotonic() - started
                stored = scalar(the_rig.database_url, readings) - stored
            finally:
                fleet.terminate()
                fleet.wait(30)
                the_rig.stop(ingest)
        result["with_ingest"] = {"load_average": load_average, **load_figures(load)}
        result["with_ingest"]["readings_stored_per_s"] = round(stored / elapsed, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="API processes of the N run")
    parser.add_argument("--rate", type=float, help="paced rate (default: half the saturated)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--vendors", type=int, default=32)
    parser.add_argument("--fleet-meters", type=int, default=2000)
    parser.add_argument("--fleet-speed", type=float, default=120.0)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the variants")
    args = parser.parse_args()
    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "cpus": os.cpu_count()}
    counts = (1, args.workers)
    with rig(args.meters, args.vendors) as the_rig:
        prepare_ceiling(the_rig.database_url, the_rig.meters)
        report["ceiling"] = pgbench_ceiling(
            the_rig.database_url, len(the_rig.meters), args.vendors, clients=16,
            seconds=args.seconds,
        )  # fmt: skip
        # The variants alternate, round after round: on a shared machine the load moves.
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        for _ in range(args.rounds):
            for n in counts:
                runs[n].append(saturated(the_rig, n, args))
        sat = {n: medians(runs[n]) for n in counts}
        rate = args.rate or round(0.5 * min(sat[n]["sales_per_s"] for n in counts))
        paced_runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        for _ in range(args.rounds):
            for n in counts:
                paced_runs[n].append(paced_run(the_rig, n, args, rate))
        for n in counts:
            report[f"processes_{n}"] = {
                "saturated": sat[n],
                "paced": {"offered_per_s": rate, **medians(paced_runs[n])},
            }
        if not args.skip_ingest:
            sides = [beside_ingest(the_rig, args, rate) for _ in range(args.rounds)]
            report["beside_ingest"] = {
                "offered_per_s": rate,
                "without": medians([side["without"] for side in sides]),
                "with_ingest": medians([side["with_ingest"] for side in sides]),
            }
    one, many = report["processes_1"], report[f"processes_{args.workers}"]
    ratios = {
        "saturated_1_vs_ceiling": one["saturated"]["sales_per_s"]
        / report["ceiling"]["sales_per_s"],
        f"saturated_{args.workers}_vs_ceiling": many["saturated"]["sales_per_s"]
        / report["ceiling"]["sales_per_s"],
        f"saturated_{args.workers}_vs_1": many["saturated"]["sales_per_s"]
        / one["saturated"]["sales_per_s"],
        "sale_vs_trivial_1": one["saturated"]["sales_per_s"] / one["saturated"]["trivial_per_s"],
    }
    if "beside_ingest" in report:
        side = report["beside_ingest"]
        ratios["p99_with_vs_without_ingest"] = (
            side["with_ingest"]["p99_ms"] / side["without"]["p99_ms"]
        )
    report["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
