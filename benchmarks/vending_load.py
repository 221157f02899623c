"""Load for the vending API: ``wrk`` at saturation, and an open-loop pacer at a fixed rate.

* :func:`saturate` runs ``wrk`` (a C load generator, installed with apt-get when missing and
  running as root) with keep-alive connections that each send the next credit vend as soon as
  the last answer arrived: the server's ceiling.
* :func:`paced` sends credit vends on a fixed schedule (``rate`` per second, open loop: a slow
  answer does not delay the next request) over a pool of keep-alive connections, and measures
  each latency from the request's *scheduled* time, so a stall counts against every request it
  held back (no coordinated omission). It runs in this process (uvloop): its own CPU cost is a
  few per cent of a core at 500 requests/s.

Every request is a new sale: a fresh ``request_id``, meters and vendors in rotation.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoadResult", "paced", "saturate"]


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    non_200: int
    errors: int

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds


_LUA = """
local meters = {%(meters)s}
local keys = {%(keys)s}
local path = "%(path)s"
local run = "%(run)s"
local counter = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  prefix = run .. "-" .. tid
end
function request()
  counter = counter + 1
  local meter = meters[(counter * 7 + tid) %% #meters + 1]
  local headers = {}
  headers["Authorization"] = "Bearer " .. keys[(counter + tid) %% #keys + 1]
  if path == "/vend/v1/credit" then
    local body = string.format(
      '{"request_id":"%%s-%%d","meter":"%%s","amount":"20.00"}', prefix, counter, meter)
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", path, headers, body)
  end
  return wrk.format("GET", path, headers)
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return found


def saturate(
    port: int,
    meters: Sequence[str],
    api_keys: Sequence[str],
    *,
    connections: int,
    seconds: int,
    path: str = "/vend/v1/credit",
    threads: int = 2,
) -> LoadResult:
    """``wrk`` against ``path`` (credit vends, or a GET such as ``/vend/v1/float``)."""
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "load.lua"
        script.write_text(
            _LUA
            % {
                "meters": ",".join(f'"{m}"' for m in meters),
                "keys": ",".join(f'"{k}"' for k in api_keys),
                "path": path,
                "run": f"w{time.time_ns():x}",
            }
        )
        result = subprocess.run(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
             "-s", str(script), f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    requests, duration_us, p50, p95, p99, bad_status, socket_errors = map(int, line.split()[1:])
    return LoadResult(
        requests, duration_us / 1e6, p50 / 1000, p95 / 1000, p99 / 1000, bad_status, socket_errors
    )


def _request(meter: str, api_key: str, request_id: str) -> bytes:
    body = f'{{"request_id":"{request_id}","meter":"{meter}","amount":"20.00"}}'.encode()
    return (
        b"POST /vend/v1/credit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + api_key.encode()
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _paced(
    port: int,
    meters: Sequence[str],
    api_keys: Sequence[str],
    rate: float,
    seconds: float,
    connections: int,
) -> LoadResult:
    prefix = f"p{os.getpid()}-{time.time_ns() % 10**9}"
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = []
    for _ in range(connections):
        pair = await asyncio.open_connection("127.0.0.1", port)
        opened.append(pair)
        idle.put_nowait(pair)
    latencies: list[float] = []
    failures = [0, 0]  # non-200, connection errors
    counter = itertools.count()
    loop = asyncio.get_running_loop()

    async def one(scheduled: float) -> None:
        n = next(counter)
        reader, writer = await idle.get()
        try:
            writer.write(_request(meters[n % len(meters)], api_keys[n % len(api_keys)],
                                  f"{prefix}-{n}"))  # fmt: skip
            status = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError):
            failures[1] += 1
            return
        idle.put_nowait((reader, writer))
        latencies.append(loop.time() - scheduled)
        if status != 200:
            failures[0] += 1

    tasks = []
    start = loop.time() + 0.05
    total = int(rate * seconds)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for _, writer in opened:
        writer.close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1000

    return LoadResult(len(latencies), elapsed, pct(0.50), pct(0.95), pct(0.99), *failures)


def paced(
    port: int,
    meters: Sequence[str],
    api_keys: Sequence[str],
    *,
    rate: float,
    seconds: float,
    connections: int = 64,
) -> LoadResult:
    """Credit vends at ``rate`` per second for ``seconds``, open loop; latency percentiles from
    each request's scheduled start."""
    try:
        import uvloop  # noqa: PLC0415 - the pacer's own overhead, as small as it gets
    except ImportError:
        return asyncio.run(_paced(port, meters, api_keys, rate, seconds, connections))
    return uvloop.run(_paced(port, meters, api_keys, rate, seconds, connections))
