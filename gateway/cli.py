"""The ``gateway`` command: ``run``, ``migrate``, ``demo``, ``settings``, ``export``, ``import``.

Settings come from ``GATEWAY_*`` variables (see README); they are validated before anything
connects, and a bad value stops the command with every problem listed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway.billing.cli import add_commands as add_billing_commands
from gateway.db.migrate import apply_migrations
from gateway.errors import GatewayError
from gateway.logs import configure_logging
from gateway.settings import Settings, load_settings

__all__ = ["main"]

log = logging.getLogger("gateway")


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up where available
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _serve(settings: Settings) -> int:
    from gateway.service import run_gateway  # noqa: PLC0415 - keeps `migrate` start-up light

    stop = asyncio.Event()
    install_stop_signals(stop)
    await run_gateway(settings, stop)
    return 0


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    if args.migrate:
        _cmd_migrate(settings, args)
    return _run_async(_serve(settings))


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    del args
    report = apply_migrations(
        settings.database_url.get_secret_value(), timescale=settings.timescaledb
    )
    log.info(
        "schema up to date",
        extra={
            "timescaledb": report.timescale,
            "applied": list(report.applied),
            "already": len(report.already),
        },
    )
    return 0


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.demo import run_demo  # noqa: PLC0415 - pulls in the fleet tooling

    return _run_async(run_demo(settings, meters=args.meters, speed=args.speed, seed=args.seed))


def _cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    del args
    print(json.dumps(settings.describe(), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway service")
    run.add_argument("--migrate", action="store_true", help="apply migrations before starting")
    run.set_defaults(func=_cmd_run)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_cmd_migrate)
    demo = sub.add_parser(
        "demo", help="local backing services + migrations + gateway + simulated fleet"
    )
    demo.add_argument("--meters", type=int, default=200, help="simulated meters (default 200)")
    demo.add_argument("--speed", type=float, default=180.0, help="simulated time speed-up")
    demo.add_argument("--seed", type=int, default=1, help="fleet random seed")
    demo.set_defaults(func=_cmd_demo)
    sub.add_parser("settings", help="print effective settings, secrets redacted").set_defaults(
        func=_cmd_settings
    )
    add_billing_commands(sub, _run_async)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format.value)
    try:
        code: int = args.func(settings, args)
    except GatewayError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
