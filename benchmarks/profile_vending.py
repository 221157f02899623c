"""CPU per sale of the real gateway, and where it goes.

Run:  .venv/bin/python -m benchmarks.profile_vending [--seconds 10] [--connections 16]
          [--compare REV] [--rounds N] [--py-spy profile.txt]

Starts ``gateway run`` with ``GATEWAY_PARTS=http`` on a fresh database (see
:mod:`benchmarks.vending_rig`), saturates it with credit vends through ``wrk`` and prints the
CPU time the gateway process and its database backends spent per sale (the CPU the process
used divided by the sales committed meanwhile), beside the same for ``GET /vend/v1/float``
(authentication and one read: the floor any authenticated request pays).

``--compare REV`` measures the gateway of git revision REV too (exported to a temporary
directory, without the packages this tree added since), alternating with this tree for
``--rounds`` rounds on the same database, and prints this tree's CPU per sale as a ratio of
REV's: on a shared machine only figures of one run compare.

With ``--py-spy FILE`` one more saturated run of this tree is sampled by py-spy and FILE gets
the functions with the most samples, by own time and including callees
(``BENCH_PY_SPY_NATIVE=1``: C frames too, pausing the process for each sample). The CPU
figures come from the runs without the profiler.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.vending_load import saturate
from benchmarks.vending_rig import (
    Rig,
    backend_pids,
    cpu_seconds,
    export_revision,
    free_port,
    process_tree,
    rig,
    wait_http,
)


def sales(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM sales").fetchone()
        return int(row[0]) if row else 0


def measure(
    the_rig: Rig, pid: int, port: int, *, path: str, connections: int, seconds: int
) -> dict[str, Any]:
    """Saturate ``path``; the gateway's and its backends' CPU ms per request."""
    gateway = process_tree(pid)
    backends = backend_pids(the_rig.database_url, the_rig.name)
    sold = sales(the_rig.database_url)
    cpu_gw, cpu_db = cpu_seconds(gateway), cpu_seconds(backends)
    load = saturate(
        port, the_rig.meters, the_rig.api_keys, connections=connections, seconds=seconds,
        path=path,
    )  # fmt: skip
    cpu_gw, cpu_db = cpu_seconds(gateway) - cpu_gw, cpu_seconds(backends) - cpu_db
    sold = sales(the_rig.database_url) - sold
    count = sold if path == "/vend/v1/credit" else load.requests
    return {
        "path": path,
        "per_s": round(load.per_s, 1),
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "non_200": load.non_200,
        "requests": load.requests,
        "sales": sold,
        "gateway_cpu_ms_per_request": round(1000 * cpu_gw / max(1, count), 3),
        "db_backends_cpu_ms_per_request": round(1000 * cpu_db / max(1, count), 3),
    }


def summarise(raw: Path, out: Path, top: int = 45) -> None:
    """py-spy's collapsed stacks → the functions with most own and total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"samples: {samples}", "", "own time:"]
    lines += [f"{100 * n / samples:6.2f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "including callees:"]
    lines += [f"{100 * n / samples:6.2f}%  {f}" for f, n in total.most_common(top * 2)]
    out.write_text("\n".join(lines) + "\n")


def profile(pid: int, seconds: int, out: Path, run_load: Any) -> None:
    beside = Path(sys.executable).parent / "py-spy"
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is needed for --py-spy: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "stacks.txt"
        # --native (C frames too) has to pause the process for each sample
        mode = ["--native"] if os.environ.get("BENCH_PY_SPY_NATIVE") else ["--nonblocking"]
        recorder = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
             "--format", "raw", "--output", str(raw), *mode],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        load = threading.Thread(target=run_load)
        load.start()
        recorder.wait()
        load.join()
        summarise(raw, out)


def run_variant(
    the_rig: Rig,
    source: Path | None,
    env: dict[str, str],
    args: argparse.Namespace,
    paths: tuple[str, ...],
) -> list[dict[str, Any]]:
    """Start a gateway (``source``: an exported revision, None: this tree; ``env``: more
    settings), warm it up, measure each of ``paths``, stop it."""
    port = free_port()
    process = the_rig.start(source, GATEWAY_PARTS="http", GATEWAY_HTTP_PORT=str(port), **env)
    try:
        wait_http(port, the_rig.api_keys[0])
        saturate(port, the_rig.meters, the_rig.api_keys, connections=args.connections, seconds=2)
        results = [
            measure(
                the_rig,
                process.pid,
                port,
                path=path,
                connections=args.connections,
                seconds=args.seconds,
            )
            for path in paths
        ]
        if args.py_spy is not None and source is None and not env:
            profile(
                process.pid,
                args.seconds,
                args.py_spy,
                lambda: saturate(
                    port,
                    the_rig.meters,
                    the_rig.api_keys,
                    connections=args.connections,
                    seconds=args.seconds,
                ),
            )
            print(f"profile: {args.py_spy}")
    finally:
        the_rig.stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--vendors", type=int, default=8)
    parser.add_argument("--py-spy", type=Path, dest="py_spy")
    parser.add_argument(
        "--compare", metavar="REV", help="also measure the gateway at git revision REV"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternate the variants N times")
    parser.add_argument(
        "--socket-dir",
        metavar="DIR",
        help="also measure this tree reaching PostgreSQL over its Unix socket in DIR",
    )
    args = parser.parse_args()
    paths = ("/vend/v1/float", "/vend/v1/credit")
    with tempfile.TemporaryDirectory() as tmp, rig(args.meters, args.vendors) as the_rig:
        variants: dict[str, tuple[Path | None, dict[str, str]]] = {}
        if args.compare:
            variants[args.compare] = (export_revision(args.compare, Path(tmp) / "old"), {})
        variants["this tree"] = (None, {})
        if args.socket_dir:
            url = f"postgresql://postgres@/{the_rig.name}?host={args.socket_dir}"
            variants["this tree, Unix socket"] = (None, {"GATEWAY_DATABASE_URL": url})
        runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in variants}
        for round_no in range(args.rounds):
            # Every round swaps the order: the database grows with each run's sales, and the
            # variant that always ran second would always be measured on the larger one.
            order = list(variants.items())
            for name, (source, env) in order[::-1] if round_no % 2 else order:
                runs[name].append(run_variant(the_rig, source, env, args, paths))
                if args.py_spy is not None and source is None and not env:
                    args.py_spy = None  # one profile is enough
        report = {
            name: {
                path: {
                    key: statistics.median(r[i][key] for r in rounds)
                    for key in rounds[0][i]
                    if key != "path"
                }
                for i, path in enumerate(paths)
            }
            for name, rounds in runs.items()
        }
        first = next(iter(variants))
        for name in list(variants)[1:]:
            report[f"{name} / {first}, CPU per sale"] = {
                key: round(
                    report[name]["/vend/v1/credit"][key] / report[first]["/vend/v1/credit"][key],
                    3,
                )
                for key in ("gateway_cpu_ms_per_request", "db_backends_cpu_ms_per_request")
            }
        print(json.dumps({"load_average": os.getloadavg(), **report}, indent=2))


if __name__ == "__main__":
    main()
