"""Decoder keys from the gateway's key store: derived through the sale's own connection."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.keystore import SoftwareKeyStore, VendingKeyId
from gateway.keystore.envelope import Keyring, new_master_key, write_keyring
from gateway.vending.errors import KeyUnavailableError
from gateway.vending.keys import (
    CachedDecoderKeys,
    DecoderKeySource,
    GatewayKeyStoreKeys,
    KeyStoreDecoderKeys,
)
from gateway.vending.service import VendingConfig, VendingService
from tests.plugins.auth import remember_secret
from tests.vending.conftest import (
    SGC,
    VK1,
    VK2,
    MemoryKeyStore,
    Vend,
    decoder_key,
    new_drn,
)
from tokens.decoder import Accepted, MeterDecoder
from tokens.keys import (
    DecoderKey,
    Dkga,
    EncryptionAlgorithm,
    KeyParameters,
    KeyType,
)
from tokens.meter_number import MeterNumber
from tokens.tid import BaseDate


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


class CountingKeys:
    """A key source that counts its derivations (what the cache should spare)."""

    def __init__(self, source: DecoderKeySource) -> None:
        self.source = source
        self.derived: list[tuple[str, int]] = []

    async def decoder_key(self, **kwargs: Any) -> DecoderKey:
        key = await self.source.decoder_key(**kwargs)
        self.derived.append((str(kwargs["params"].meter.drn), kwargs["krn"]))
        return key


async def test_each_meter_key_is_derived_once_and_tokens_still_open_with_the_meter_key(
    vend: Vend, tmp_path: Path
) -> None:
    keystore = key_store(tmp_path)
    async with await psycopg.AsyncConnection.connect(vend.database_url) as conn:
        await keystore.import_vending_key(
            conn, VendingKeyId(SGC, 1, Dkga.DKGA02), bytes.fromhex(VK1)
        )
    vendor = await vend.vendor("1000.00")
    name = await vend.vendor_name(vendor)
    meters = [await vend.meter() for _ in range(2)]
    counting = CountingKeys(GatewayKeyStoreKeys(keystore))
    service = VendingService(
        vend.pool, CachedDecoderKeys(counting, size=100, ttl_s=300), VendingConfig()
    )
    bodies = [
        await service.credit(name, f"cached-{n}-{i}", meter, Decimal("10.00"))
        for n, meter in enumerate(meters)
        for i in range(3)
    ]
    assert sorted(counting.derived) == sorted((meter, 1) for meter in meters)
    models = {meter: MeterDecoder(decoder_key(meter), krn=1, ti=1, sgc=SGC) for meter in meters}
    for body in bodies:
        receipt = orjson.loads(body)
        [token] = receipt["tokens"]
        assert isinstance(models[receipt["meter"]].accept(token["token"]), Accepted)


def params_for(drn: str, krn: int = 1) -> KeyParameters:
    return KeyParameters(
        meter=MeterNumber.from_drn(drn),
        key_type=KeyType.UNIQUE,
        sgc=SGC,
        ti=1,
        krn=krn,
        base_date=BaseDate(2014),
        ea=EncryptionAlgorithm.EA07,
    )


async def ask(keys: DecoderKeySource, drn: str, krn: int = 1) -> DecoderKey:
    return await keys.decoder_key(
        conn=None, sgc=SGC, krn=krn, dkga="02", params=params_for(drn, krn), ea="07"
    )


async def test_the_cache_keeps_no_refusal_and_tells_revisions_apart() -> None:
    store = MemoryKeyStore()
    counting = CountingKeys(KeyStoreDecoderKeys(store))
    keys = CachedDecoderKeys(counting, size=100, ttl_s=300)
    drn = new_drn()
    with pytest.raises(KeyUnavailableError):
        await ask(keys, drn)
    store.add(SGC, 1, "02", VK1)  # imported a moment later: the next sale uses it
    assert (await ask(keys, drn)).key == decoder_key(drn).key
    store.add(SGC, 2, "02", VK2)
    assert (await ask(keys, drn, krn=2)).key == decoder_key(drn, krn=2, vk=VK2).key
    assert (await ask(keys, drn)).key == decoder_key(drn).key
    assert counting.derived == [(drn, 1), (drn, 2)]
    assert decoder_key(drn).key.hex() not in repr(keys) and VK1 not in repr(keys)


async def test_the_cache_forgets_keys_after_their_time_and_beyond_its_size() -> None:
    store = MemoryKeyStore()
    store.add(SGC, 1, "02", VK1)
    counting = CountingKeys(KeyStoreDecoderKeys(store))
    now = [0.0]
    keys = CachedDecoderKeys(counting, size=2, ttl_s=60, clock=lambda: now[0])
    first, second, third = new_drn(), new_drn(), new_drn()
    await ask(keys, first)
    now[0] = 59.0
    await ask(keys, first)
    assert counting.derived == [(first, 1)]
    now[0] = 61.0
    await ask(keys, first)  # expired: derived again
    await ask(keys, second)
    await ask(keys, third)  # a third key: the least recently used (first) goes
    await ask(keys, second)
    await ask(keys, first)
    assert counting.derived == [(first, 1), (first, 1), (second, 1), (third, 1), (first, 1)]
