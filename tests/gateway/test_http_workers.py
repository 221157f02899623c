"""Several API processes on one port (GATEWAY_HTTP_REUSE_PORT): the kernel spreads new
connections over them, and the port stays served while one of them stops."""

from __future__ import annotations

import httpx
import pytest

from gateway.errors import ListenError
from gateway.http.security import Role
from tests.plugins.auth import AuthHeaders
from tests.plugins.gateway import gateway_running, make_settings


async def served(port: int, headers: dict[str, str], count: int) -> list[int]:
    """Status codes of ``count`` requests, each on a new connection."""
    codes = []
    for _ in range(count):
        async with httpx.AsyncClient(headers=headers) as client:
            codes.append((await client.get(f"http://127.0.0.1:{port}/meters")).status_code)
    return codes


async def test_two_api_processes_share_one_port(
    database_url: str, mqtt_url: str, topic_prefix: str, auth_headers: AuthHeaders
) -> None:
    technician = await auth_headers(database_url, Role.TECHNICIAN)
    first = make_settings(database_url, mqtt_url, topic_prefix, parts="http", http_reuse_port=True)
    async with gateway_running(first) as one:
        assert one.http_port is not None
        second = make_settings(
            database_url,
            mqtt_url,
            topic_prefix,
            parts="http",
            http_reuse_port=True,
            http_port=one.http_port,
        )
        async with gateway_running(second) as two:
            assert two.http_port == one.http_port
            before = [g.services.pool.get_stats().get("requests_num", 0) for g in (one, two)]
            assert await served(one.http_port, technician, 40) == [200] * 40
            after = [g.services.pool.get_stats().get("requests_num", 0) for g in (one, two)]
            # both processes answered some of the 40 connections (all 40 landing on one
            # socket of two has a chance of 2 in 2^40)
            assert after[0] > before[0] and after[1] > before[1]
        # the second stopped: the first alone serves the port
        assert await served(one.http_port, technician, 10) == [200] * 10


async def test_without_reuse_port_a_second_process_cannot_take_the_port(
    database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    first = make_settings(database_url, mqtt_url, topic_prefix, parts="http")
    async with gateway_running(first) as one:
        second = make_settings(
            database_url, mqtt_url, topic_prefix, parts="http", http_port=one.http_port
        )
        with pytest.raises(ListenError, match="already in use"):
            async with gateway_running(second):
                pass
