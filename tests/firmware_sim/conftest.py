"""Fixtures for the simulated firmware tests.

The broker (``mqtt_url``) and the per-test ``topic_prefix`` come from the project-wide plugin
(tests/plugins/services.py), which finds or starts a real Mosquitto.
"""

from __future__ import annotations

import pytest

from gateway.dev.services import free_ports


@pytest.fixture
def free_port() -> int:
    """The first of four consecutive free ports (a Modbus fleet serves several)."""
    return free_ports(4)
