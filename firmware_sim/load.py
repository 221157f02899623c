"""``firmware-sim load``: publish a fixed, countable set of readings as fast as possible.

For benchmarks and exactly-once checks. Meter ``i`` (id ``L{seed:02d}{i:07d}``) sends readings
``k = 0 .. M-1`` stamped ``base + k × interval`` with ``1.8.0 = 1000 + i + k / 4`` (unique per
meter and instant), in JSON batches of ``--batch`` readings, or as per-meter binary frames
(``--binary``), or as concentrator binary frames naming their meters (``--concentrator``).
Everything is QoS 1; the command waits for every PUBACK, then prints one JSON summary line
(messages, readings, seconds, rates) on stdout. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import gmqtt

from firmware_sim.mqtt_link import FlowStorage, parse_broker_url
from firmware_sim.transmit import PayloadFormat, encode_readings
from protocols.binary import BinaryRow, encode_frame
from protocols.telemetry import Instant
from protocols.topics import Topics

__all__ = ["LoadPlan", "plan_messages", "run_load"]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    seed: int
    meters: int
    readings: int
    batch: int
    base: datetime
    interval_s: int
    fmt: PayloadFormat = PayloadFormat.JSON
    concentrator: bool = False

    def meter_id(self, index: int) -> str:
        return f"L{self.seed % 100:02d}{index:07d}"

    def value(self, index: int, k: int) -> float:
        return 1000.0 + index + k / 4

    def ts(self, k: int) -> datetime:
        return self.base + timedelta(seconds=k * self.interval_s)


def plan_messages(plan: LoadPlan, topics: Topics) -> Iterator[tuple[str, bytes, int]]:
    """(topic, body, readings in it) for the whole load, pure and deterministic."""
    batch = max(1, plan.batch)
    if plan.concentrator:
        cid = f"load{plan.seed % 100:02d}"
        base_ms = int(plan.base.timestamp() * 1000)
        rows: list[BinaryRow] = []
        for k in range(plan.readings):
            for i in range(plan.meters):
                offset = k * plan.interval_s * 1000
                rows.append(BinaryRow(offset, [plan.value(i, k)], plan.meter_id(i)))
                if len(rows) == batch:
                    yield (
                        topics.concentrator_telemetry(cid),
                        encode_frame(base_ms, ["1.8.0"], rows),
                        len(rows),
                    )
                    rows = []
        if rows:
            yield (
                topics.concentrator_telemetry(cid),
                encode_frame(base_ms, ["1.8.0"], rows),
                len(rows),
            )
        return
    for first in range(0, plan.readings, batch):
        ks = range(first, min(first + batch, plan.readings))
        for i in range(plan.meters):
            instants = [Instant(plan.ts(k), {"1.8.0": plan.value(i, k)}) for k in ks]
            yield topics.telemetry(plan.meter_id(i)), encode_readings(instants, plan.fmt), len(ks)


async def run_load(args: argparse.Namespace) -> int:
    broker = parse_broker_url(args.broker)
    base = args.base or (
        datetime.now(UTC).replace(microsecond=0)
        - timedelta(seconds=args.readings * args.interval + 3600)
    )
    plan = LoadPlan(
        seed=args.seed,
        meters=args.meters,
        readings=args.readings,
        batch=args.batch if not args.binary or args.batch else 96,
        base=base,
        interval_s=args.interval,
        fmt=PayloadFormat.BINARY if args.binary or args.concentrator else PayloadFormat.JSON,
        concentrator=args.concentrator,
    )
    topics = Topics(args.prefix)
    storages = [FlowStorage(16) for _ in range(max(1, args.connections))]
    clients = [
        gmqtt.Client(f"dc-load{args.seed % 100:02d}-{n}", persistent_storage=s)
        for n, s in enumerate(storages)
    ]
    for client in clients:
        broker.apply_credentials(client)
        await client.connect(broker.host, broker.port)
    total_msgs = -(-plan.readings // plan.batch) * plan.meters
    if plan.concentrator:
        total_msgs = -(-plan.readings * plan.meters // plan.batch)
    sent_msgs = sent_readings = 0
    started = time.perf_counter()
    last_report = started

    async def pump(n: int, queue: asyncio.Queue[tuple[str, bytes] | None]) -> None:
        while (item := await queue.get()) is not None:
            await storages[n].wait_room()
            clients[n].publish(gmqtt.Message(item[0], item[1], qos=1))

    queues: list[asyncio.Queue[tuple[str, bytes] | None]] = [
        asyncio.Queue(maxsize=256) for _ in clients
    ]
    async with asyncio.TaskGroup() as group:
        for n, queue in enumerate(queues):
            group.create_task(pump(n, queue), name=f"load-pump-{n}")
        for number, (topic, body, count) in enumerate(plan_messages(plan, topics)):
            # Same meter, same connection: keeps each meter's messages in order.
            await queues[
                zlib.crc32(topic.encode()) % len(queues)
                if not plan.concentrator
                else number % len(queues)
            ].put((topic, body))
            sent_msgs += 1
            sent_readings += count
            now = time.perf_counter()
            if not args.no_progress and now - last_report > 0.5:
                last_report = now
                print(f"\rsent {sent_msgs}/{total_msgs} messages", end="", file=sys.stderr)
        for queue in queues:
            await queue.put(None)
    for storage in storages:
        await storage.wait_empty()
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.disconnect()
    if not args.no_progress:
        print(f"\rsent {sent_msgs}/{total_msgs} messages", file=sys.stderr)
    summary = {
        "messages": sent_msgs,
        "readings": sent_readings,
        "meters": plan.meters,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(sent_msgs / elapsed, 1),
        "readings_per_s": round(sent_readings / elapsed, 1),
        "format": "concentrator" if plan.concentrator else plan.fmt.value,
        "base": base.isoformat(),
        "interval_s": plan.interval_s,
    }
    print(json.dumps(summary))
    return 0
