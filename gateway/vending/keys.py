"""Where decoder keys come from: an HSM-shaped interface and its adapter to the key store.

The vending service never holds vending keys. It asks a :class:`DecoderKeySource` for one
meter's decoder key, derived from its supply group's vending key (per SGC, KRN and DKGA);
only the derived decoder key reaches the service, in memory, for the token being issued.

:class:`GatewayKeyStoreKeys` is what the service uses (behind :class:`CachedDecoderKeys`,
which keeps derived decoder keys for a while): it asks the gateway's key store
(:class:`gateway.keystore.KeyStore`, the HSM-shaped interface) to derive the decoder key, so the
vending key never leaves the store. :class:`KeyStoreDecoderKeys` derives in software from a
:class:`VendingKeyStore` that hands out vending keys (tests, and stores without a derive
operation). None of them logs, returns or puts key material in an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from cachetools import TTLCache
from psycopg import AsyncConnection

from gateway.errors import KeyStoreError
from gateway.keystore.base import KeyStore
from gateway.vending.errors import KeyUnavailableError, VendingUnavailableError
from tokens.errors import TokenError
from tokens.keys import DecoderKey, Dkga, KeyParameters, VendingKey, derive_decoder_key

__all__ = [
    "CachedDecoderKeys",
    "DecoderKeySource",
    "GatewayKeyStoreKeys",
    "KeyStoreDecoderKeys",
    "NoDecoderKeys",
    "VendingKeyStore",
]


class DecoderKeySource(Protocol):
    """Derives a meter's decoder key from its supply group's vending key.

    ``conn`` is the sale's own connection, inside its open transaction: a key source reads
    through it and never takes a second connection from the pool while the sale holds one.
    """

    async def decoder_key(
        self,
        *,
        conn: AsyncConnection[Any],
        sgc: str,
        krn: int,
        dkga: str,
        params: KeyParameters,
        ea: str,
    ) -> DecoderKey:
        """The decoder key for ``params``; :class:`KeyUnavailableError` when no vending key fits."""
        ...


class VendingKeyStore(Protocol):
    """Looks up a vending key by supply group, key revision and DKGA (None: not stored),
    reading through the caller's connection ``conn``."""

    async def vending_key(
        self, *, conn: AsyncConnection[Any], sgc: str, krn: int, dkga: str
    ) -> VendingKey | None: ...


def _underivable(sgc: str, krn: int, exc: TokenError) -> KeyUnavailableError:
    """The refusal when the token engine cannot derive a meter's decoder key (its message
    names the meter's key data, never a key)."""
    return KeyUnavailableError(
        f"cannot derive a decoder key for supply group {sgc} revision {krn}: {exc.message}"
    )


class KeyStoreDecoderKeys:
    """A :class:`DecoderKeySource` deriving in software from a :class:`VendingKeyStore`."""

    def __init__(self, store: VendingKeyStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return "KeyStoreDecoderKeys(<vending keys hidden>)"

    async def decoder_key(
        self,
        *,
        conn: AsyncConnection[Any],
        sgc: str,
        krn: int,
        dkga: str,
        params: KeyParameters,
        ea: str,
    ) -> DecoderKey:
        vending_key = await self._store.vending_key(conn=conn, sgc=sgc, krn=krn, dkga=dkga)
        if vending_key is None:
            raise KeyUnavailableError(
                f"no vending key for supply group {sgc} revision {krn} (DKGA{dkga})"
            )
        if vending_key.dkga is not Dkga.parse(dkga) or params.ea.value != ea:
            raise KeyUnavailableError(
                f"the vending key of supply group {sgc} revision {krn} does not fit the meter"
            )
        try:
            return derive_decoder_key(vending_key, params)
        except TokenError as exc:
            raise _underivable(sgc, krn, exc) from None


class GatewayKeyStoreKeys:
    """A :class:`DecoderKeySource` over the gateway's key store: the store derives the key,
    reading the vending key through the sale's connection."""

    def __init__(self, keystore: KeyStore) -> None:
        self._keystore = keystore

    def __repr__(self) -> str:
        return "GatewayKeyStoreKeys(<vending keys hidden>)"

    async def decoder_key(
        self,
        *,
        conn: AsyncConnection[Any],
        sgc: str,
        krn: int,
        dkga: str,
        params: KeyParameters,
        ea: str,
    ) -> DecoderKey:
        if params.ea.value != ea:
            raise KeyUnavailableError(f"the meter's algorithm EA{ea} does not fit its key data")
        try:
            return await self._keystore.derive_decoder_key(conn, params, Dkga.parse(dkga))
        except KeyStoreError:
            raise KeyUnavailableError(
                f"no usable vending key for supply group {sgc} revision {krn} (DKGA{dkga})"
            ) from None
        except psycopg.OperationalError:
            raise VendingUnavailableError("the key store cannot be reached right now") from None
        except TokenError as exc:
            raise _underivable(sgc, krn, exc) from None


class CachedDecoderKeys:
    """A :class:`DecoderKeySource` that keeps the decoder keys it derived, for a while.

    Without it every sale asks the key store again: a read through the sale's connection (a
    round trip while the meter is locked), the vending key's unwrapping and the DKGA. A decoder
    key depends only on the meter's key data and on the vending key named by its SGC, KRN and
    DKGA, and a stored vending key never changes (another key needs another key revision); so
    the cache is keyed by every input of the derivation and returns what the source would.
    It holds at most ``size`` keys, each for at most ``ttl_s`` (least recently used go first),
    in this process only; never a vending key, and never a refusal (a vending key imported a
    moment ago serves the next sale).
    """

    def __init__(
        self,
        source: DecoderKeySource,
        *,
        size: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._keys: TTLCache[tuple[str, int, str, str, KeyParameters], DecoderKey] = TTLCache(
            maxsize=size, ttl=ttl_s, timer=clock
        )

    def __repr__(self) -> str:
        return f"CachedDecoderKeys({self._source!r}, <{len(self._keys)} keys hidden>)"

    async def decoder_key(
        self,
        *,
        conn: AsyncConnection[Any],
        sgc: str,
        krn: int,
        dkga: str,
        params: KeyParameters,
        ea: str,
    ) -> DecoderKey:
        slot = (sgc, krn, dkga, ea, params)
        key = self._keys.get(slot)
        if key is None:
            key = await self._source.decoder_key(
                conn=conn, sgc=sgc, krn=krn, dkga=dkga, params=params, ea=ea
            )
            self._keys[slot] = key
        return key


class NoDecoderKeys:
    """The key source of a gateway without a key store: every sale is refused, clearly."""

    async def decoder_key(
        self,
        *,
        conn: AsyncConnection[Any],
        sgc: str,
        krn: int,
        dkga: str,
        params: KeyParameters,
        ea: str,
    ) -> DecoderKey:
        del conn, sgc, krn, dkga, params, ea
        raise VendingUnavailableError(
            "no vending key store is configured on this gateway", retry_after_s=None
        )
