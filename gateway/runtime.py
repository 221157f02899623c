"""Process-level helpers shared by the commands: event loop, stop signals, listening socket."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
from collections.abc import Coroutine
from typing import Any

from gateway.errors import ListenError

__all__ = ["install_stop_signals", "listen", "run_async"]


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


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = a free port); ListenError saying what to
    change when that is impossible (``GATEWAY_HTTP_PORT`` / ``GATEWAY_HTTP_HOST``).

    With ``reuse_port`` (SO_REUSEPORT) other processes of the same user may listen on the same
    port too, and the kernel spreads incoming connections over them.
    """
    try:
        sock = socket.create_server((host, port), reuse_port=reuse_port)
    except ValueError as exc:  # the platform has no SO_REUSEPORT
        raise ListenError(f"GATEWAY_HTTP_REUSE_PORT is not supported here: {exc}") from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"HTTP port {port} on {host} is already in use: set GATEWAY_HTTP_PORT to a free "
                "port (GATEWAY_HTTP_PORT=0 picks one)"
            ) from exc
        if exc.errno == errno.EACCES:
            raise ListenError(
                f"no permission to listen on HTTP port {port}: set GATEWAY_HTTP_PORT to a port "
                "above 1023 (GATEWAY_HTTP_PORT=0 picks a free one)"
            ) from exc
        raise ListenError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): check GATEWAY_HTTP_HOST "
            "and GATEWAY_HTTP_PORT"
        ) from exc
    # asyncio turns Nagle off only on sockets created with proto IPPROTO_TCP, which
    # create_server's are not (proto 0). With Nagle on, a response's body waits for the
    # client's (delayed, ~40 ms) ACK of its headers. Accepted sockets inherit the option.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
