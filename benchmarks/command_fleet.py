"""The simulated fleet of ``bench_commands``, in a process of its own.

Run:  python -m benchmarks.command_fleet --meters N --seed S --per-connection K --silent Q
          --broker mqtt://127.0.0.1:PORT --provisioning DIR

All electricity meters, post-paid, on the wall clock, readings in batches of 96 intervals (once
a day); each verifies commands with the key in its provisioning file, and the first ``--silent``
ignore commands (neither carry them out nor answer). Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path

from firmware_sim.clock import WallClock
from firmware_sim.faults import Fault, FaultKind
from firmware_sim.fleet import FleetSpec, GroundTruth, build_fleet, run_fleet
from firmware_sim.identity import MeterIdentity, Transport, Utility, make_identity
from firmware_sim.meter import MeterConfig
from firmware_sim.mqtt_link import parse_broker_url
from firmware_sim.provisioning import ProvisionedKeys
from protocols.topics import Topics

_EVER = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def identities(seed: int, meters: int) -> list[MeterIdentity]:
    return [
        make_identity(seed, n, transport=Transport.MQTT, utility=Utility.ELECTRICITY, prepaid=False)
        for n in range(meters)
    ]


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    now = datetime.now(UTC)
    idents = identities(args.seed, args.meters)
    faults = {
        i.meter_id: [Fault(i.meter_id, FaultKind.IGNORE_COMMANDS, *_EVER)]
        for i in idents[: args.silent]
    }
    devices = build_fleet(
        FleetSpec(seed=args.seed, meters=args.meters, config=MeterConfig(), batch=96),
        now,
        faults=faults,
        identities=idents,
    )
    await run_fleet(
        devices,
        clock=WallClock(now),
        stop=stop,
        truth=GroundTruth(None),
        broker=parse_broker_url(args.broker),
        topics=Topics(""),
        per_connection=args.per_connection,
        session_expiry=3600,
        link_prefix=f"bench{args.seed}",
        provisioning=ProvisionedKeys(args.provisioning),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--per-connection", type=int, default=100)
    parser.add_argument("--silent", type=int, default=0)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--provisioning", type=Path, required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
