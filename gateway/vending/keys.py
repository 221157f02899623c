"""Where decoder keys come from: an HSM-shaped interface and its adapter to the key store.

The vending service never holds vending keys. It asks a :class:`DecoderKeySource` for one
meter's decoder key, derived from its supply group's vending key (per SGC, KRN and DKGA);
only the derived decoder key reaches the service, in memory, for the token being issued.

:class:`GatewayKeyStoreKeys` is what the service uses: it asks the gateway's key store
(:class:`gateway.keystore.KeyStore`, the HSM-shaped interface) to derive the decoder key, so the
vending key never leaves the store. :class:`KeyStoreDecoderKeys` derives in software from a
:class:`VendingKeyStore` that hands out vending keys (tests, and stores without a derive
operation). None of them logs, returns or puts key material in an error.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg
from psycopg import AsyncConnection

from gateway.errors import KeyStoreError
from gateway.keystore.base import KeyStore
from gateway.vending.errors import KeyUnavailableError, VendingUnavailableError
from tokens.errors import TokenError
from tokens.keys import DecoderKey, Dkga, KeyParameters, VendingKey, derive_decoder_key

__all__ = [
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
            raise KeyUnavailableError(
                f"cannot derive a decoder key for supply group {sgc} revision {krn}: {exc.message}"
            ) from None


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
            raise KeyUnavailableError(
                f"cannot derive a decoder key for supply group {sgc} revision {krn}: {exc.message}"
            ) from None


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
        raise VendingUnavailableError("no vending key store is configured on this gateway")
