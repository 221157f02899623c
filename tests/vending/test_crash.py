"""A crash between commit and reply (kill -9): the retry gets the stored receipt."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from decimal import Decimal

import httpx

from gateway.auth import store as access
from gateway.dev.services import free_port
from gateway.vending import vendors
from tests.vending.conftest import Vend
from tests.vending.server import VENDOR


def start_server(database_url: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.vending.server", database_url, str(port), *extra]
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/vend/v1/float", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        return process
    process.kill()
    raise AssertionError("the vending server did not start")


async def test_kill_between_commit_and_reply_then_retry(vend: Vend) -> None:
    meter = await vend.meter()
    async with vend.pool.connection() as conn:
        await access.create_principal(conn, name=VENDOR.name, role=VENDOR.role, kind="machine")
        await vendors.top_up(conn, VENDOR.name, Decimal("100.00"), actor="test")
    body = {"request_id": "crash-1", "meter": meter, "amount": "23.00"}
    port = free_port()
    server = await asyncio.to_thread(start_server, vend.database_url, port, "--crash-after-commit")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            try:
                response = await client.post("/vend/v1/credit", json=body, timeout=30)
            except httpx.TransportError:
                response = None
        assert response is None, "the server replied although it was killed before replying"
        assert await asyncio.to_thread(server.wait, 30) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
    stored = await vend.scalar(
        "SELECT response FROM vend_requests WHERE vendor = %s AND request_id = 'crash-1'",
        VENDOR.name,
    )
    assert stored is not None
    port = free_port()
    server = await asyncio.to_thread(start_server, vend.database_url, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            retry = await client.post("/vend/v1/credit", json=body, timeout=30)
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 30)
    assert retry.status_code == 200
    assert retry.content == bytes(stored)
    assert retry.json()["units"] == "10.0"
    assert await vend.scalar("SELECT count(*) FROM sales WHERE meter_id = %s", meter) == 1
    assert await vend.scalar(
        "SELECT sum(amount) FROM float_movements WHERE vendor = %s", VENDOR.name
    ) == Decimal("77.00")
