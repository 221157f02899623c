"""``firmware-sim``: run a simulated meter fleet, or publish a fixed load for benchmarks.

    firmware-sim run --meters N --broker mqtt://127.0.0.1:1883 [--modbus-port P] [--speed X]
                     [--seed S] [--scenario FILE] [--truth FILE] ...
    firmware-sim load --meters N --readings M --broker URL [--batch B | --binary] ...

See docs/firmware_sim.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from firmware_sim.clock import WallClock
from firmware_sim.fleet import FleetSpec, GroundTruth, build_fleet, fleet_identities, run_fleet
from firmware_sim.identity import (
    DEV_COMMAND_MASTER_KEY,
    DEV_VENDING_KEY,
    MeterIdentity,
    Transport,
)
from firmware_sim.meter import MeterConfig
from firmware_sim.mqtt_link import parse_broker_url
from firmware_sim.provisioning import ProvisionedKeys
from firmware_sim.scenario import load_scenario
from firmware_sim.transmit import PayloadFormat
from protocols.errors import MeteringError, UsageError
from protocols.topics import Topics

__all__ = ["main"]

log = logging.getLogger(__name__)


def _time(text: str) -> datetime:
    if text == "now":
        return datetime.now(UTC)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("time needs a UTC offset, e.g. 2026-01-05T00:00:00Z")
    return moment


def _hex_key(size: int) -> Callable[[str], bytes]:
    def parse(text: str) -> bytes:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError("key must be hex") from None
        if len(key) != size:
            raise argparse.ArgumentTypeError(f"key must be {size} bytes")
        return key

    return parse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meters", type=int, required=True, help="number of meters")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    p.add_argument("--seed", type=int, default=1, help="fleet seed (same seed, same fleet)")
    p.add_argument("--prefix", default="", help="topic prefix, e.g. 'site-a/'")
    p.add_argument("--log-level", default="INFO")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="firmware-sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a fleet until SIGINT/SIGTERM")
    _add_common(run)
    run.add_argument("--modbus-port", type=int, help="first Modbus TCP port (enables Modbus)")
    run.add_argument("--modbus-host", default="127.0.0.1")
    run.add_argument(
        "--modbus-meters", type=int, help="meters served over Modbus (default: 10%% of --meters)"
    )
    run.add_argument("--units-per-port", type=int, default=50, help="Modbus unit ids per port")
    run.add_argument("--modbus-pacing", type=float, default=0.0, help="seconds per request")
    run.add_argument("--modbus-busy", type=float, default=0.0, help="probability of exception 6")
    run.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    run.add_argument(
        "--start",
        type=_time,
        help="simulated start (RFC 3339 or 'now'); default now, or 7 days ago when --speed > 1",
    )
    run.add_argument(
        "--no-cap",
        action="store_true",
        help="let simulated time run past the wall clock (readings from the future)",
    )
    run.add_argument("--scenario", type=Path, help="faults to inject (JSON or YAML)")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".data") / "firmware-sim",
        help="where output files go unless given explicitly (default .data/firmware-sim)",
    )
    run.add_argument(
        "--truth", type=Path, help="ground truth JSON Lines (default DATA_DIR/ground-truth.jsonl)"
    )
    run.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        help="seconds between progress lines (messages sent, per second); 0 for none",
    )
    run.add_argument("--manifest", type=Path, help="write the fleet's identities (JSON Lines)")
    run.add_argument("--interval", type=int, default=900, help="reading interval, seconds")
    run.add_argument("--tick", type=int, default=60, help="physics step, seconds")
    run.add_argument("--batch", type=int, default=1, help="interval readings per message")
    run.add_argument("--format", choices=[f.value for f in PayloadFormat], default="json")
    run.add_argument(
        "--per-connection",
        type=int,
        help="meters per MQTT connection (data concentrator); default 1 up to 100 meters, else 100",
    )
    run.add_argument("--duration", type=float, help="stop after this many wall seconds")
    run.add_argument("--session-expiry", type=int, default=2 * 86400)
    run.add_argument("--vending-key", type=_hex_key(8), default=DEV_VENDING_KEY)
    run.add_argument("--command-master-key", type=_hex_key(32), default=DEV_COMMAND_MASTER_KEY)
    run.add_argument(
        "--provisioning",
        type=Path,
        help="directory of the gateway's provisioning files (<meter_id>.json with the command"
        " key); a provisioned meter verifies commands with that key",
    )

    load = sub.add_parser("load", help="publish a fixed number of readings as fast as possible")
    _add_common(load)
    load.add_argument("--readings", type=int, required=True, help="readings per meter")
    load.add_argument("--batch", type=int, default=96, help="readings per JSON message")
    load.add_argument("--binary", action="store_true", help="compact binary frames (§4)")
    load.add_argument("--concentrator", action="store_true", help="concentrator binary topic")
    load.add_argument("--connections", type=int, default=4)
    load.add_argument("--interval", type=int, default=900)
    load.add_argument("--base", type=_time, default=None, help="time of reading 0")
    load.add_argument("--no-progress", action="store_true")
    return parser


def _manifest_line(ident: MeterIdentity, args: argparse.Namespace, modbus_index: int) -> str:
    row: dict[str, object] = {
        "meter_id": ident.meter_id,
        "pan": ident.pan,
        "index": ident.index,
        "utility": ident.utility.value,
        "prepaid": ident.prepaid,
        "transport": ident.transport.value,
        "three_phase": ident.three_phase,
        "command_key_hex": ident.command_key.hex(),
    }
    if ident.transport is Transport.MODBUS:
        row["modbus"] = {
            "host": args.modbus_host,
            "port": args.modbus_port + modbus_index // args.units_per_port,
            "unit": modbus_index % args.units_per_port + 1,
            "word_order": ident.word_order.value,
        }
    if ident.sts is not None:
        params = ident.sts.params
        row["sts"] = {
            "sgc": params.sgc,
            "kt": int(params.key_type),
            "ti": params.ti,
            "krn": params.krn,
            "base_date": int(params.base_date),
            "ea": params.ea.value,
            "dkga": "02",
        }
    return json.dumps(row)


async def _run(args: argparse.Namespace) -> int:
    modbus_meters = 0
    if args.modbus_port is not None:
        modbus_meters = (
            args.modbus_meters if args.modbus_meters is not None else max(1, args.meters // 10)
        )
    spec = FleetSpec(
        seed=args.seed,
        meters=args.meters,
        modbus_meters=modbus_meters,
        config=MeterConfig(interval_s=args.interval, tick_s=args.tick),
        batch=args.batch,
        fmt=PayloadFormat(args.format),
        vending_key=args.vending_key,
        command_master=args.command_master_key,
    )
    scenario = load_scenario(args.scenario) if args.scenario else None
    start: datetime | None = args.start
    if start is None and scenario is not None:
        start = scenario.start
    if start is None:
        now = datetime.now(UTC)
        start = now - timedelta(days=7) if args.speed > 1 else now
    clock = WallClock(start, args.speed, cap_at_wall=not args.no_cap)
    identities = fleet_identities(spec)
    faults = scenario.resolve(identities, start) if scenario is not None else {}
    devices = build_fleet(spec, start, faults, identities)
    if args.manifest:
        first_modbus = spec.meters - spec.modbus_meters
        lines = [_manifest_line(i, args, i.index - first_modbus) + "\n" for i in identities]
        # Written aside and renamed: a reader waiting for the file never sees it half written.
        partial = args.manifest.with_name(args.manifest.name + ".partial")
        partial.write_text("".join(lines), encoding="utf-8")
        partial.replace(args.manifest)
    mqtt_count = spec.meters - spec.modbus_meters
    per_connection = args.per_connection or (1 if mqtt_count <= 100 else 100)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.duration is not None:
        loop.call_later(args.duration, stop.set)
    began = time.monotonic()
    truth_path: Path = args.truth or args.data_dir / "ground-truth.jsonl"
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    truth = GroundTruth(truth_path)
    log.info(
        "starting %d meters (%d MQTT, %d Modbus), seed %d, speed %.1f, sim start %s",
        spec.meters, mqtt_count, spec.modbus_meters, spec.seed, args.speed, start.isoformat(),
    )  # fmt: skip
    try:
        links = await run_fleet(
            devices,
            clock=clock,
            stop=stop,
            truth=truth,
            broker=parse_broker_url(args.broker) if mqtt_count else None,
            topics=Topics(args.prefix),
            per_connection=per_connection,
            modbus_host=args.modbus_host,
            modbus_port=args.modbus_port,
            modbus_units_per_port=args.units_per_port,
            modbus_options={"pacing_s": args.modbus_pacing, "busy": args.modbus_busy},
            session_expiry=args.session_expiry,
            link_prefix=f"sim{args.seed}",
            progress_every_s=args.progress_every or None,
            provisioning=ProvisionedKeys(args.provisioning) if args.provisioning else None,
        )
    finally:
        truth.close()
    sent = sum(link.sent_messages for link in links)
    elapsed = max(time.monotonic() - began, 1e-9)
    print(
        f"stopped: {spec.meters} meters, {sent} MQTT messages sent in {elapsed:.0f} s "
        f"({sent / elapsed:.0f}/s), {len(truth.records)} fault records in {truth_path}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("gmqtt").setLevel(logging.WARNING)
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        from firmware_sim.load import run_load  # noqa: PLC0415

        return asyncio.run(run_load(args))
    except UsageError as exc:
        print(f"firmware-sim: {exc}", file=sys.stderr)
        return 2
    except MeteringError as exc:
        print(f"firmware-sim: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
