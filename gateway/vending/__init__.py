"""Prepaid vending for third-party vendors (docs/vending.md).

Pure cores: :mod:`~gateway.vending.pricing` (amount → debt, fixed charge, VAT, blocks, units)
and :mod:`~gateway.vending.rules` (free basic units, key changes, months). On PostgreSQL:
:mod:`~gateway.vending.store` (SQL), :mod:`~gateway.vending.sale` (one sale inside its
transaction), :mod:`~gateway.vending.service` (idempotency and every vending operation),
:mod:`~gateway.vending.delivery` (keypad outbox), :mod:`~gateway.vending.tariffs` (tariff
files), :mod:`~gateway.vending.vendors` (floats, statements). :mod:`~gateway.vending.config`
holds the parameters, :mod:`~gateway.vending.keys` the decoder-key interface to the key store,
:mod:`~gateway.vending.errors` the refusals.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway.settings import Settings
from gateway.vending.errors import VendingError
from gateway.vending.keys import (
    CachedDecoderKeys,
    DecoderKeySource,
    KeyStoreDecoderKeys,
    NoDecoderKeys,
)
from gateway.vending.service import VendingConfig, VendingService

__all__ = [
    "CachedDecoderKeys",
    "DecoderKeySource",
    "KeyStoreDecoderKeys",
    "NoDecoderKeys",
    "VendingConfig",
    "VendingError",
    "VendingService",
    "build_vending",
]


def build_vending(
    pool: AsyncConnectionPool[Any], settings: Settings, keys: DecoderKeySource | None = None
) -> VendingService:
    """The service's vending part: its pool, the key source (none: sales are refused with
    ``vending_unavailable``; its decoder keys are cached as the settings say) and the
    ``GATEWAY_VENDING_*`` settings."""
    source: DecoderKeySource = NoDecoderKeys()
    if keys is not None:
        source = keys
        if settings.vending_key_cache_size > 0:
            source = CachedDecoderKeys(
                keys,
                size=settings.vending_key_cache_size,
                ttl_s=settings.vending_key_cache_ttl_s,
            )
    return VendingService(pool, source, VendingConfig.from_settings(settings))
