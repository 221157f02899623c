"""The vending API as a process of its own, for crash tests.

``python -m tests.vending.server DATABASE_URL PORT [--crash-after-commit]`` serves the vending
routes with the test key store; every request authenticates as the vendor ``till-vendor``.
With ``--crash-after-commit`` the process kills itself (SIGKILL) after a credit vend's
transaction committed and before the reply is written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from decimal import Decimal

import uvicorn
from psycopg_pool import AsyncConnectionPool

from gateway.audit import Origin
from gateway.http.security import Principal, Role
from gateway.http.vending import require_vendor
from gateway.vending.keys import KeyStoreDecoderKeys
from gateway.vending.service import VendingService
from tests.vending.conftest import SGC, VK1, MemoryKeyStore, build_app

VENDOR = Principal(7, "till-vendor", Role.VENDOR, "machine")


class CrashingService(VendingService):
    async def credit(
        self,
        vendor: str,
        request_id: str,
        meter_id: str,
        amount: Decimal,
        *,
        origin: Origin | None = None,
    ) -> bytes:
        body = await super().credit(vendor, request_id, meter_id, amount, origin=origin)
        os.kill(os.getpid(), signal.SIGKILL)
        return body


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("port", type=int)
    parser.add_argument("--crash-after-commit", action="store_true")
    args = parser.parse_args()
    keys = MemoryKeyStore()
    keys.add(SGC, 1, "02", VK1)
    kind = CrashingService if args.crash_after_commit else VendingService
    async with AsyncConnectionPool(args.database_url, min_size=1, max_size=4) as pool:
        app = build_app(kind(pool, KeyStoreDecoderKeys(keys)))
        app.dependency_overrides[require_vendor] = lambda: VENDOR
        config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning")
        await uvicorn.Server(config).serve()


if __name__ == "__main__":
    asyncio.run(main())
