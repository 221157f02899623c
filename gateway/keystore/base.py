"""The key store interface: operations on keys, shaped so that a PKCS#11 HSM can implement it.

Callers ask for what they need done — derive this meter's decoder key, sign this command,
generate and export a meter's command key for provisioning — rather than for stored key bytes.
A software implementation (:class:`~gateway.keystore.software.SoftwareKeyStore`) keeps the keys
in the database under envelope encryption; an HSM implementation keeps them in the module and
performs the same calls there (DKGA02/04 derivation and HMAC-SHA-256 are PKCS#11 mechanisms).

Vending keys are named by (SGC, KRN, DKGA), the way STS key management names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from psycopg import AsyncConnection

from protocols.commands import Command, CommandAction
from tokens.keys import DecoderKey, Dkga, KeyParameters

__all__ = ["KeyInfo", "KeyStore", "VendingKeyId", "command_key_name", "vending_key_name"]


@dataclass(frozen=True, slots=True)
class VendingKeyId:
    sgc: str
    krn: int
    dkga: Dkga

    @property
    def name(self) -> str:
        return vending_key_name(self.sgc, self.krn, self.dkga)


def vending_key_name(sgc: str, krn: int, dkga: Dkga | str) -> str:
    return f"sts-vending/{sgc}/{krn}/{Dkga(dkga).value}"


def command_key_name(meter_id: str) -> str:
    return f"command/{meter_id}"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a stored key: never its bytes."""

    name: str
    purpose: str
    master_key_id: str
    attributes: dict[str, Any]
    created_at: datetime


class KeyStore(Protocol):
    async def verify(self, conn: AsyncConnection[Any]) -> int:
        """Check that every stored key can be unwrapped; the number of keys. Raises
        KeyStoreError (wrong or missing master key) — call it at start."""
        ...

    async def import_vending_key(
        self, conn: AsyncConnection[Any], key: VendingKeyId, secret: bytes
    ) -> bool:
        """Store a vending key; False if this exact key was already there, KeyStoreError if a
        different key holds the name."""
        ...

    async def derive_decoder_key(
        self, conn: AsyncConnection[Any], params: KeyParameters, dkga: Dkga
    ) -> DecoderKey:
        """The decoder key of the meter described by ``params`` (DKGA02/04 under the vending
        key of its SGC and KRN). The result lives in memory only while it is used."""
        ...

    async def ensure_command_key(self, conn: AsyncConnection[Any], meter_id: str) -> bool:
        """Generate the meter's 32-byte command key unless it has one; True if generated."""
        ...

    async def sign_command(
        self,
        conn: AsyncConnection[Any],
        *,
        meter_id: str,
        command_id: str,
        action: CommandAction,
        issued_at: datetime,
        ttl: timedelta,
        nonce: str,
    ) -> Command:
        """Sign a command with the meter's command key (HMAC-SHA-256, docs/protocol.md §7)."""
        ...

    async def export_command_key(self, conn: AsyncConnection[Any], meter_id: str) -> bytes:
        """The command key for the meter's provisioning file (key injection at the factory or
        installation); the one operation that lets a key leave the store."""
        ...

    async def list_keys(self, conn: AsyncConnection[Any]) -> list[KeyInfo]: ...

    def wrap(self, name: str, secret: bytes) -> bytes:
        """Encrypt a secret that the caller stores itself (e.g. in its own table), bound to
        ``name``; the result is opaque and safe to store."""
        ...

    def unwrap(self, name: str, blob: bytes) -> bytes:
        """The secret of a :meth:`wrap` result; KeyStoreError if the name or key differs."""
        ...
