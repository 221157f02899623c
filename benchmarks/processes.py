"""The processes of a ``bench_commands`` run: the gateway of a source tree and the simulated
fleet, each in a process of its own, and the CPU seconds they and the gateway's database
server processes use (Linux ``/proc``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from gateway.dev.services import free_port

TREE = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backends_cpu(url: str) -> dict[int, float]:
    """CPU seconds of the server processes connected to the run's database (the gateway's)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {int(pid): cpu_seconds(int(pid)) for (pid,) in await cur.fetchall()}


def used_since(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass(slots=True)
class Processes:
    gateway: subprocess.Popen[bytes] | None = None
    fleet: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        for name, proc in (("gateway", self.gateway), ("fleet", self.fleet)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the {name} exited; see its log")

    def stop(self) -> None:
        for proc in (self.gateway, self.fleet):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_gateway(
    tree: Path, url: str, port: int, master: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        PYTHONPATH=str(tree),
        GATEWAY_DATABASE_URL=url,
        GATEWAY_MQTT_URL=f"mqtt://127.0.0.1:{port}",
        GATEWAY_MQTT_CLIENT_ID=f"bench-gateway-{uuid.uuid4().hex[:6]}",
        GATEWAY_HTTP_PORT=str(free_port()),
        GATEWAY_LOG_LEVEL="WARNING",
        GATEWAY_MASTER_KEY_FILE=str(master),
    )
    out = log.open("ab")
    # From the tree's own directory: `python -m` puts the working directory first on the path.
    command = [sys.executable, "-m", "gateway", "run"]
    return subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=out)


def start_fleet(
    args: argparse.Namespace, port: int, provisioning: Path, log: Path
) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    command = [sys.executable, "-m", "benchmarks.command_fleet"]
    command += ["--meters", str(args.meters), "--seed", str(args.seed)]
    command += ["--per-connection", str(args.per_connection), "--silent", str(args.silent)]
    command += ["--broker", f"mqtt://127.0.0.1:{port}", "--provisioning", str(provisioning)]
    return subprocess.Popen(command, cwd=TREE, stdout=out, stderr=out)
