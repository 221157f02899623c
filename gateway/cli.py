"""The ``gateway`` command: ``run``, ``migrate``, ``demo``, ``settings``, ``principals``, ``keys``,
``tariffs``, ``vendors``, ``detect-score``, ``export``, ``import``.

Settings come from ``GATEWAY_*`` variables (see README); they are validated before anything
connects, and a bad value stops the command with every problem listed.

Each subcommand is one :class:`Command` in :data:`COMMANDS`: its name, help, an optional function
adding its arguments, and its handler, ``(settings, args) -> exit code``. Handlers import heavy
modules (the service, the demo) inside themselves, so ``gateway migrate`` starts light and no
module imported here imports this one back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.auth.cli import add_subcommands as add_access_subcommands
from gateway.billing.cli import add_commands as add_billing_commands
from gateway.control.cli import add_control_commands
from gateway.control.cli import add_import_commands as add_control_imports
from gateway.db.migrate import apply_migrations
from gateway.errors import GatewayError
from gateway.logs import configure_logging
from gateway.runtime import install_stop_signals, run_async
from gateway.settings import Settings, load_settings
from gateway.vending.cli import add_commands as add_vending_commands

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

log = logging.getLogger("gateway")

Handler = Callable[[Settings, argparse.Namespace], int]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


@dataclass(frozen=True, slots=True)
class Command:
    """One ``gateway`` subcommand."""

    name: str
    help: str
    run: Handler
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


async def _serve(settings: Settings) -> int:
    from gateway.service import run_gateway  # noqa: PLC0415 - keeps `migrate` start-up light

    stop = asyncio.Event()
    install_stop_signals(stop)
    await run_gateway(settings, stop)
    return 0


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--migrate", action="store_true", help="apply migrations before starting")


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    if args.migrate:
        _cmd_migrate(settings, args)
    return run_async(_serve(settings))


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    del args
    report = apply_migrations(
        settings.database_url.get_secret_value(),
        timescale=settings.timescaledb,
        time_zone=settings.deployment_time_zone,
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


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meters", type=int, default=200, help="simulated meters (default 200)")
    parser.add_argument("--speed", type=float, default=180.0, help="simulated time speed-up")
    parser.add_argument("--seed", type=int, default=1, help="fleet random seed")


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.dev.demo import run_demo  # noqa: PLC0415 - pulls in the fleet tooling

    return run_async(run_demo(settings, meters=args.meters, speed=args.speed, seed=args.seed))


def _cmd_detect_score(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.detection.cli import detect_score  # noqa: PLC0415 - only for this command

    return detect_score(
        settings.database_url.get_secret_value(), args.truth, since=args.since, as_json=args.json
    )


def _cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    del args
    print(json.dumps(settings.describe(), indent=2, default=str))
    return 0


def _aware_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad time {text!r} (RFC 3339)") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("time needs a UTC offset, e.g. 2026-01-05T00:00:00Z")
    return moment


def _detect_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True, type=Path, help="ground truth (JSON Lines)")
    parser.add_argument("--since", type=_aware_time, help="judge only what ends at or after this")
    parser.add_argument("--json", action="store_true", help="one JSON object per kind")


COMMANDS: tuple[Command, ...] = (
    Command("run", "run the gateway service", _cmd_run, _run_arguments),
    Command("migrate", "apply database migrations", _cmd_migrate),
    Command(
        "demo",
        "local backing services + migrations + gateway + simulated fleet",
        _cmd_demo,
        _demo_arguments,
    ),
    Command("settings", "print effective settings, secrets redacted", _cmd_settings),
    Command(
        "detect-score",
        "match stored alerts against a ground-truth JSONL, per kind",
        _cmd_detect_score,
        _detect_score_arguments,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        child = sub.add_parser(command.name, help=command.help)
        command.arguments(child)
        child.set_defaults(func=command.run)
    add_access_subcommands(sub)
    add_vending_commands(sub)
    imports = add_billing_commands(sub, run_async)
    add_control_imports(imports, run_async)
    add_control_commands(sub, run_async)
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
    except BaseExceptionGroup as group:
        # A task of a TaskGroup (the demo runs the gateway as one) failed: a domain error is
        # still one clear line, not a traceback.
        matched, rest = group.split(GatewayError)
        if matched is None or rest is not None:
            raise
        for error in _leaves(matched):
            log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
