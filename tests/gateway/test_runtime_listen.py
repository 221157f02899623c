"""The HTTP listening socket: connections it accepts send small writes without waiting."""

from __future__ import annotations

import socket

from gateway.runtime import listen


def test_accepted_connections_have_nagle_off() -> None:
    # With Nagle on, a response's body waits for the client's delayed ACK of the headers
    # (about 40 ms a request on Linux).
    server = listen("127.0.0.1", 0)
    with server, socket.create_connection(server.getsockname()):
        accepted, _ = server.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
