"""Process-level helpers shared by the commands: the event loop runner and stop signals."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

__all__ = ["install_stop_signals", "run_async"]


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` to completion on uvloop where it is available, else asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up where available
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` (a clean shutdown) instead of raising."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
