"""Detection beside ingest: throughput with detection off and on, and alert lag under load.

Run:  .venv/bin/python -m benchmarks.bench_detection [--readings N] [--meters M] [--rounds R]

All figures come from one run on one machine, so they read as ratios:

1. **off**: the batched-ingest workload of ``bench_ingest`` (N readings in messages of 96, JSON,
   for M registered electricity meters) pre-loaded into a private Mosquitto; a ``gateway run``
   process with ``GATEWAY_DETECTION_ENABLED=false`` is timed from its first commit to its last.
2. **on**: the same with detection enabled (the ingest transaction queues each meter's changed
   range; the detection loop re-evaluates them). While it ingests, a probe publishes a
   ``tamper_cover_open`` event for a fresh meter every second; the **alert lag** of each probe is
   the time from its commit (the event row's ``received_at``) until its alert is visible in the
   ``alerts`` view.

``R`` rounds alternate off/on so that a machine shared with other work disturbs both alike; the
overhead is ``1 − on / off`` on the medians. Targets: lag ≤ 60 s, overhead ≤ 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import gmqtt
import psycopg

from benchmarks.bench_ingest import (
    BIN,
    create_session,
    drop_database,
    fresh_database,
    json_messages,
    publish,
)
from gateway.dev.services import MosquittoProcess, free_port

FILTERS = [
    "meters/+/telemetry",
    "meters/+/events",
    "meters/+/status",
    "concentrators/+/telemetry",
]


def register(url: str, meters: int) -> None:
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO meters (meter_id, utility, verified, reporting_interval_s)"
            " VALUES (%s, 'electricity', true, 900)",
            [(f"B{m:05d}",) for m in range(meters)],
        )


async def probe(port: int, stop: asyncio.Event, sent: dict[str, float]) -> None:
    """A tamper event for a fresh meter every second until ``stop``."""
    client = gmqtt.Client(f"bench-probe-{uuid.uuid4().hex[:8]}")
    await client.connect("127.0.0.1", port)
    n = 0
    while not stop.is_set():
        meter = f"P{n:05d}"
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        body = json.dumps({"ts": ts, "type": "tamper_cover_open"}).encode()
        client.publish(f"meters/{meter}/events", body, qos=1)
        sent[meter] = time.time()
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await client.disconnect()


def lags(url: str) -> list[float]:
    """Seconds from each probe event's commit to its alert becoming visible (polled)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM a.visible - e.received_at) FROM meter_events e"
            " JOIN bench_seen a ON a.meter_id = e.meter_id WHERE e.meter_id LIKE 'P%%'"
        ).fetchall()
    return [float(r[0]) for r in rows]


def watch_alerts(url: str, stop: float) -> None:
    """Record when each probe's alert is first seen (by polling, as a dashboard would)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_seen (meter_id text PRIMARY KEY, visible timestamptz)"
        )
        while time.time() < stop:
            conn.execute(
                "INSERT INTO bench_seen SELECT meter_id, clock_timestamp() FROM alerts"
                " WHERE meter_id LIKE 'P%%' ON CONFLICT DO NOTHING"
            )
            time.sleep(0.1)


def run_gateway(url: str, port: int, readings: int, work: Path, *, detection: bool) -> float:
    """``gateway run`` on the pre-loaded queue; readings/s from first commit to last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATABASE_URL=url,
        GATEWAY_MQTT_URL=f"mqtt://127.0.0.1:{port}",
        GATEWAY_MQTT_CLIENT_ID="bench-gateway",
        GATEWAY_HTTP_PORT=str(free_port()),
        GATEWAY_LOG_LEVEL="WARNING",
        GATEWAY_DETECTION_ENABLED="true" if detection else "false",
    )
    with (work / "gateway.log").open("ab") as log:
        proc = subprocess.Popen([BIN / "gateway", "run"], env=env, stdout=log, stderr=log)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                first_t = first_n = None
                while True:
                    row = conn.execute("SELECT count(*) FROM reading_data").fetchone()
                    n = int(row[0]) if row else 0
                    now = time.perf_counter()
                    if first_t is None and n > 0:
                        first_t, first_n = now, n
                    if n >= readings:
                        assert first_t is not None and first_n is not None
                        rate = (n - first_n) / max(now - first_t, 1e-3)
                        if detection:
                            # Let the loop finish what ingest queued before stopping it.
                            deadline = time.time() + 120
                            while time.time() < deadline:
                                left = conn.execute(
                                    "SELECT count(*) FROM detection_queue"
                                ).fetchone()
                                if left and left[0] == 0:
                                    break
                                time.sleep(0.2)
                            time.sleep(3.0)
                        return rate
                    if proc.poll() is not None:
                        raise RuntimeError(f"gateway exited; see {work / 'gateway.log'}")
                    time.sleep(0.02)
        finally:
            proc.terminate()
            proc.wait(30)


async def one_run(
    broker: MosquittoProcess, args: argparse.Namespace, work: Path, *, detection: bool
) -> tuple[float, list[float]]:
    url = fresh_database()
    try:
        register(url, args.meters)
        await create_session(broker.port, "bench-gateway", FILTERS)
        await publish(broker.port, json_messages(args.readings, 96, args.meters))
        if not detection:
            rate = await asyncio.to_thread(
                run_gateway, url, broker.port, args.readings, work, detection=False
            )
            return rate, []
        stop = asyncio.Event()
        sent: dict[str, float] = {}
        probe_task = asyncio.create_task(probe(broker.port, stop, sent), name="probe")
        watcher = asyncio.create_task(
            asyncio.to_thread(watch_alerts, url, time.time() + args.max_seconds), name="watch"
        )
        try:
            rate = await asyncio.to_thread(
                run_gateway, url, broker.port, args.readings, work, detection=True
            )
        finally:
            stop.set()
            await probe_task
        watcher.cancel()
        return rate, lags(url)
    finally:
        drop_database(url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=480_000)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-detection-"))
    broker = MosquittoProcess(port=free_port(), directory=work / "mqtt", autosave_interval_s=1800)
    broker.start()
    off: list[float] = []
    on: list[float] = []
    lag: list[float] = []
    try:
        for _ in range(args.rounds):
            off.append((await one_run(broker, args, work, detection=False))[0])
            rate, seen = await one_run(broker, args, work, detection=True)
            on.append(rate)
            lag.extend(seen)
    finally:
        broker.stop()
    result = {
        "ingest_readings_per_s_detection_off": statistics.median(off),
        "ingest_readings_per_s_detection_on": statistics.median(on),
        "ingest_overhead": 1.0 - statistics.median(on) / statistics.median(off),
        "alert_lag_s_median": statistics.median(lag) if lag else None,
        "alert_lag_s_max": max(lag) if lag else None,
        "probes_seen": len(lag),
        "runs_off": off,
        "runs_on": on,
    }
    print(json.dumps(_rounded(result), indent=2))


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    asyncio.run(main())
