"""End-to-end ingest throughput: MQTT (QoS 1, ack after commit) → gateway → PostgreSQL.

Run:  .venv/bin/python -m benchmarks.bench_ingest [--readings N] [--per-message K] [--single M]

What it measures, all in one run on one machine so the figures can be read as ratios:

1. **ceiling**: the same rows COPY-upserted straight into PostgreSQL (staging table + INSERT …
   ON CONFLICT DO NOTHING, 20 000 rows a transaction) — what the database alone sustains.
2. **batched**: N readings in messages of K readings (96 = a day of 15-minute intervals),
   JSON, pre-loaded into a private Mosquitto for the gateway's persistent session; then a
   `gateway run` process is started and timed from its first commit to its last.
3. **binary**: the same readings as compact binary frames (docs/protocol.md §4).
4. **bare client**: M one-reading messages drained by the gateway's own MQTT client
   (``gateway.mqtt``) acknowledging each batch as it arrives — the broker-and-client ceiling
   for message rate; beside it the same drained by a gmqtt subscriber (auto-ack), the client
   the gateway used before.
5. **single**: the same M one-reading messages through the gateway.

``--compare-gateway PATH`` also times another build's ``gateway`` executable (for example a
checkout of the previous release, in its own virtualenv) on the same pre-loaded queues, so that
old and new figures come from one run on one machine.

Pre-loading separates consumer throughput from publisher speed: on a 2-core machine a publisher
running at the same time would take a core from the gateway or PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import gmqtt
import psycopg

from gateway.db.migrate import apply_migrations
from gateway.dev.services import (
    LOCAL_PG_ADMIN,
    MosquittoProcess,
    create_database,
    free_port,
    with_database,
)
from gateway.ingest.writer import STAGING_DDL
from gateway.mqtt import MqttClient, MqttOptions
from gateway.settings import TimescaleMode
from protocols import BinaryRow, encode_frame

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
BIN = Path(sys.executable).parent


def json_messages(total: int, per_message: int, meters: int) -> Iterator[tuple[str, bytes]]:
    for n in range(total // per_message):
        meter = f"B{n % meters:05d}"
        base = (n // meters) * per_message
        body = [
            {"ts": T0_MS + (base + i) * 900_000, "values": {"1.8.0": float(n * per_message + i)}}
            for i in range(per_message)
        ]
        yield f"meters/{meter}/telemetry", json.dumps(body, separators=(",", ":")).encode()


def binary_messages(total: int, per_message: int, meters: int) -> Iterator[tuple[str, bytes]]:
    for n in range(total // per_message):
        meter = f"B{n % meters:05d}"
        base = (n // meters) * per_message
        rows = [BinaryRow(i * 900_000, [float(n * per_message + i)]) for i in range(per_message)]
        yield f"meters/{meter}/telemetry", encode_frame(T0_MS + base * 900_000, ["1.8.0"], rows)


def mqtt_client(port: int, client_id: str, filters: list[str] | None = None) -> MqttClient:
    return MqttClient(
        MqttOptions(
            host="127.0.0.1",
            port=port,
            client_id=client_id,
            filters=filters or [],
            session_expiry_s=3600,
            receive_maximum=20_000,
        )
    )


async def publish(port: int, messages: Iterator[tuple[str, bytes]]) -> int:
    """QoS 1, waiting for the PUBACKs 5 000 messages at a time."""
    client = mqtt_client(port, f"bench-pub-{uuid.uuid4().hex[:8]}")
    task = asyncio.create_task(client.run())
    await client.connected.wait()
    count = 0
    window: list[asyncio.Future[None]] = []
    for topic, payload in messages:
        window.append(asyncio.ensure_future(client.publish(topic, payload)))
        count += 1
        if len(window) >= 5000:
            await asyncio.gather(*window)
            window.clear()
    await asyncio.gather(*window)
    await client.close()
    await task
    return count


async def create_session(port: int, client_id: str, filters: list[str]) -> None:
    """Open and close a persistent session so the broker queues for it."""
    client = mqtt_client(port, client_id, filters)
    task = asyncio.create_task(client.run())
    await client.subscribed.wait()
    await client.close()
    await task


def fresh_database() -> str:
    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    create_database(LOCAL_PG_ADMIN, name)
    url = with_database(LOCAL_PG_ADMIN, name)
    apply_migrations(url, timescale=TimescaleMode(os.environ.get("GATEWAY_TIMESCALEDB", "auto")))
    return url


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(LOCAL_PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def ceiling(total: int) -> float:
    """Rows/s for COPY to staging + upsert, 20 000 rows per transaction, straight to the DB."""
    url = fresh_database()
    try:
        rows = [
            (
                f"B{n % 1000:05d}",
                T0 + timedelta(minutes=15 * n),
                "1.8.0",
                float(n),
                None,
                "measured",
            )
            for n in range(total)
        ]
        with psycopg.connect(url) as conn:
            conn.execute(STAGING_DDL)  # type: ignore[arg-type]
            conn.commit()
            start = time.perf_counter()
            for i in range(0, total, 20_000):
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy(
                        "COPY ingest_stage (meter_id, ts, channel, value, raw_ts, quality)"
                        " FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(["text", "timestamptz", "text", "float8", "text", "text"])
                        for row in rows[i : i + 20_000]:
                            copy.write_row(row)
                    cur.execute(
                        "INSERT INTO reading_data (meter_id, ts, channel, value, raw_ts, quality)"
                        " SELECT meter_id, ts, channel, value, raw_ts, quality FROM ingest_stage"
                        " ON CONFLICT DO NOTHING"
                    )
            return total / (time.perf_counter() - start)
    finally:
        drop_database(url)


async def bare_client(port: int, expected: int) -> float:
    """Messages/s drained by the gateway's MQTT client, acknowledging each batch on arrival."""
    client_id = f"bench-bare-{uuid.uuid4().hex[:8]}"
    await create_session(port, client_id, ["meters/+/telemetry"])
    await publish(port, json_messages(expected, 1, 1000))
    client = mqtt_client(port, client_id, ["meters/+/telemetry"])
    task = asyncio.create_task(client.run())
    received, first = 0, 0.0
    while received < expected:
        batch = await client.receive()
        if received == 0:
            first = time.perf_counter()
        received += len(batch)
        client.acknowledge(m.ack for m in batch if m.ack is not None)
    elapsed = time.perf_counter() - first
    await client.close()
    await task
    return expected / elapsed


async def bare_gmqtt(port: int, expected: int) -> float:
    """Messages/s drained by a gmqtt QoS 1 subscriber that only counts (auto-ack)."""
    client_id = f"bench-gmqtt-{uuid.uuid4().hex[:8]}"
    await create_session(port, client_id, ["meters/+/telemetry"])
    await publish(port, json_messages(expected, 1, 1000))
    done = asyncio.Event()
    state = {"n": 0, "first": 0.0}

    def on_message(client: object, topic: str, payload: bytes, qos: int, props: object) -> int:
        if state["n"] == 0:
            state["first"] = time.perf_counter()
        state["n"] += 1
        if state["n"] >= expected:
            done.set()
        return 0

    client = gmqtt.Client(
        client_id, clean_session=False, session_expiry_interval=3600, receive_maximum=2000
    )
    client.on_message = on_message
    await client.connect("127.0.0.1", port)
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - state["first"]
    await client.disconnect()
    return expected / elapsed


def run_gateway_until(
    url: str,
    port: int,
    client_id: str,
    readings: int,
    work: Path,
    binary: Path,
    parts: str | None = None,
) -> float:
    """Start `gateway run` on a pre-loaded queue; readings/s from first commit to last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATABASE_URL=url,
        GATEWAY_MQTT_URL=f"mqtt://127.0.0.1:{port}",
        GATEWAY_MQTT_CLIENT_ID=client_id,
        GATEWAY_HTTP_PORT=str(free_port()),
        GATEWAY_LOG_LEVEL="WARNING",
    )
    if parts is not None:
        env["GATEWAY_PARTS"] = parts
    log = (work / "gateway.log").open("ab")
    proc = subprocess.Popen([binary, "run"], env=env, stdout=log, stderr=log)
    started = time.perf_counter()
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
                    if n == first_n:  # all in one batch: too few readings to time, fall back
                        return n / (now - started)
                    return (n - first_n) / (now - first_t)
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway exited; see {work / 'gateway.log'}")
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(30)


async def gateway_run(
    broker: MosquittoProcess,
    messages: Iterator[tuple[str, bytes]],
    readings: int,
    work: Path,
    binary: Path = BIN / "gateway",
    parts: str | None = None,
) -> float:
    url = fresh_database()
    # A session of its own per run: a second build timed on the same broker must not resume
    # the first one's session (its queue already drained, its packet ids in use).
    client_id = f"bench-gateway-{uuid.uuid4().hex[:8]}"
    try:
        await create_session(
            broker.port,
            client_id,
            [
                "meters/+/telemetry",
                "meters/+/events",
                "meters/+/status",
                "concentrators/+/telemetry",
            ],
        )
        await publish(broker.port, messages)
        return await asyncio.to_thread(
            run_gateway_until, url, broker.port, client_id, readings, work, binary, parts
        )
    finally:
        drop_database(url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=960_000)
    parser.add_argument("--per-message", type=int, default=96)
    parser.add_argument("--single", type=int, default=200_000)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument(
        "--compare-gateway",
        type=Path,
        help="another build's `gateway` executable, timed on the same queues",
    )
    parser.add_argument(
        "--parts",
        help="GATEWAY_PARTS for the timed gateway (default: all parts in one process; 'ingest'"
        " times an ingest-only process, as deployed beside separate detection/API processes)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    broker = MosquittoProcess(port=free_port(), directory=work / "mqtt", autosave_interval_s=1800)
    broker.start()
    results: dict[str, float] = {}
    builds = {"": BIN / "gateway"}
    if args.compare_gateway is not None:
        builds["compare_"] = args.compare_gateway
    try:
        results["ceiling_rows_per_s"] = ceiling(args.readings)
        results["bare_client_msgs_per_s"] = await bare_client(broker.port, args.single)
        results["bare_gmqtt_msgs_per_s"] = await bare_gmqtt(broker.port, args.single)
        workloads: list[tuple[str, Callable[[], Iterator[tuple[str, bytes]]], int]] = [
            (
                "batched_json_readings_per_s",
                lambda: json_messages(args.readings, args.per_message, args.meters),
                args.readings,
            ),
            (
                "batched_binary_readings_per_s",
                lambda: binary_messages(args.readings, args.per_message, args.meters),
                args.readings,
            ),
            (
                "single_json_msgs_per_s",
                lambda: json_messages(args.single, 1, args.meters),
                args.single,
            ),
        ]
        # Builds alternate per workload, so that a change in the machine's load during the run
        # does not fall on one build only.
        for key, make, count in workloads:
            for name, binary in builds.items():
                results[f"{name}{key}"] = await gateway_run(
                    broker, make(), count, work, binary, args.parts
                )
    finally:
        broker.stop()
    for name in builds:
        results[f"{name}batched_json_vs_ceiling"] = (
            results[f"{name}batched_json_readings_per_s"] / results["ceiling_rows_per_s"]
        )
        results[f"{name}single_vs_bare_client"] = (
            results[f"{name}single_json_msgs_per_s"] / results["bare_client_msgs_per_s"]
        )
    print(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
