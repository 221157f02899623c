"""Decoder keys from the gateway's key store: derived through the sale's own connection."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.keystore import SoftwareKeyStore, VendingKeyId
from gateway.keystore.envelope import Keyring, new_master_key, write_keyring
from gateway.vending.keys import GatewayKeyStoreKeys
from gateway.vending.service import VendingConfig, VendingService
from tests.plugins.auth import remember_secret
from tests.vending.conftest import SGC, VK1, Vend, decoder_key
from tokens.decoder import Accepted, MeterDecoder
from tokens.keys import Dkga


def key_store(tmp_path: Path) -> SoftwareKeyStore:
    path = tmp_path / "master.key"
    keyring = Keyring((new_master_key(),))
    write_keyring(path, keyring)
    remember_secret(keyring.current.secret)
    return SoftwareKeyStore(path)


async def test_sales_derive_keys_on_their_own_connection_with_a_pool_of_one(
    vend: Vend, tmp_path: Path
) -> None:
    keystore = key_store(tmp_path)
    async with await psycopg.AsyncConnection.connect(vend.database_url) as conn:
        await keystore.import_vending_key(
            conn, VendingKeyId(SGC, 1, Dkga.DKGA02), bytes.fromhex(VK1)
        )
    vendor = await vend.vendor("1000.00")
    name = await vend.vendor_name(vendor)
    meters = [await vend.meter() for _ in range(3)]
    # One connection and a short pool wait: a sale that asked the pool for a second
    # connection while holding the first would time out instead of issuing.
    async with AsyncConnectionPool(
        vend.database_url, min_size=1, max_size=1, timeout=3, open=False
    ) as pool:
        await pool.wait()
        service = VendingService(pool, GatewayKeyStoreKeys(keystore), VendingConfig())
        bodies = await asyncio.wait_for(
            asyncio.gather(
                *(
                    service.credit(name, f"pool-of-one-{n}", meter, amount)
                    for n, (meter, amount) in enumerate(
                        (m, Decimal(a)) for m in meters for a in ("10.00", "20.00")
                    )
                )
            ),
            timeout=60,
        )
    models = {meter: MeterDecoder(decoder_key(meter), krn=1, ti=1, sgc=SGC) for meter in meters}
    for body in bodies:
        receipt = orjson.loads(body)
        [token] = receipt["tokens"]
        assert isinstance(models[receipt["meter"]].accept(token["token"]), Accepted)
