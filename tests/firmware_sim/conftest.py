"""Fixtures for the simulated firmware tests.

The broker (``mqtt_url``) and the per-test ``topic_prefix`` come from the project-wide plugin
(tests/plugins/services.py), which finds or starts a real Mosquitto.
"""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
