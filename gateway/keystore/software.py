"""The software key store: secrets in the ``key_store`` table under envelope encryption.

Keys are decrypted only inside the call that uses them and never logged, returned by the API or
put in an error. The master key file is read at construction; when a row names a master key the
process does not hold (another process rotated it), the file is read again once, so rotation
needs no restart: ``gateway keys rotate-master`` writes the new key first in the file, re-wraps
every data key in one transaction, then drops the old key from the file.
"""

from __future__ import annotations

import logging
import secrets
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway.errors import KeyStoreError
from gateway.keystore.base import KeyInfo, VendingKeyId, command_key_name, vending_key_name
from gateway.keystore.envelope import (
    Keyring,
    Sealed,
    from_blob,
    load_keyring,
    new_master_key,
    open_sealed,
    rewrap,
    seal,
    to_blob,
    write_keyring,
)
from protocols.commands import COMMAND_KEY_BYTES, Command, CommandAction, sign_command
from tokens.keys import DecoderKey, Dkga, KeyParameters, VendingKey, derive_decoder_key

__all__ = ["SoftwareKeyStore", "rotate_master_key"]

log = logging.getLogger(__name__)

_SELECT: Final = "SELECT master_key_id, wrapped_key, ciphertext FROM key_store WHERE name = %s"


class SoftwareKeyStore:
    """:class:`~gateway.keystore.base.KeyStore` with keys sealed in PostgreSQL."""

    def __init__(self, master_key_file: Path) -> None:
        self._path = master_key_file
        self._keyring = load_keyring(master_key_file)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SoftwareKeyStore({self._path}, current={self._keyring.current.key_id})"

    @property
    def current_master_key_id(self) -> str:
        return self._keyring.current.key_id

    def _keyring_for(self, key_id: str) -> Keyring:
        if self._keyring.get(key_id) is None:
            with self._lock:  # rotated by another process since we read the file?
                self._keyring = load_keyring(self._path)
        return self._keyring

    def _open(self, name: str, row: tuple[Any, ...]) -> bytes:
        sealed = Sealed(row[0], bytes(row[1]), bytes(row[2]))
        return open_sealed(self._keyring_for(sealed.master_key_id), name, sealed)

    async def _secret(self, conn: AsyncConnection[Any], name: str) -> bytes:
        cur = await conn.execute(_SELECT, (name,))
        row = await cur.fetchone()
        if row is None:
            raise KeyStoreError(f"no key {name!r} in the key store")
        return self._open(name, row)

    async def _store(
        self,
        conn: AsyncConnection[Any],
        name: str,
        purpose: str,
        secret: bytes,
        attributes: dict[str, Any],
    ) -> bool:
        sealed = seal(self._keyring, name, secret)
        cur = await conn.execute(
            "INSERT INTO key_store (name, purpose, master_key_id, wrapped_key, ciphertext,"
            " attributes) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
            (name, purpose, sealed.master_key_id, sealed.wrapped_key, sealed.ciphertext,
             Jsonb(attributes)),
        )  # fmt: skip
        return cur.rowcount == 1

    async def verify(self, conn: AsyncConnection[Any]) -> int:
        cur = await conn.execute(
            "SELECT DISTINCT ON (master_key_id) name, master_key_id, wrapped_key, ciphertext"
            " FROM key_store ORDER BY master_key_id, name"
        )
        for name, *row in await cur.fetchall():
            self._open(name, tuple(row))
        cur = await conn.execute("SELECT count(*) FROM key_store")
        count = await cur.fetchone()
        return int(count[0]) if count else 0

    async def import_vending_key(
        self, conn: AsyncConnection[Any], key: VendingKeyId, secret: bytes
    ) -> bool:
        VendingKey(key.dkga, secret)  # validates the length for the algorithm
        attributes = {"sgc": key.sgc, "krn": key.krn, "dkga": key.dkga.value}
        async with conn.transaction():
            if await self._store(conn, key.name, "sts-vending", secret, attributes):
                return True
            if await self._secret(conn, key.name) != secret:
                raise KeyStoreError(
                    f"a different vending key is already stored for SGC {key.sgc}, KRN {key.krn},"
                    f" DKGA{key.dkga.value}; a new key needs a new key revision"
                )
        return False

    async def derive_decoder_key(
        self, conn: AsyncConnection[Any], params: KeyParameters, dkga: Dkga
    ) -> DecoderKey:
        secret = await self._secret(conn, vending_key_name(params.sgc, params.krn, dkga))
        return derive_decoder_key(VendingKey(dkga, secret), params)

    async def ensure_command_key(self, conn: AsyncConnection[Any], meter_id: str) -> bool:
        return await self._store(
            conn,
            command_key_name(meter_id),
            "command",
            secrets.token_bytes(COMMAND_KEY_BYTES),
            {"meter_id": meter_id},
        )

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
        key = await self._secret(conn, command_key_name(meter_id))
        return sign_command(
            key, meter_id=meter_id, command_id=command_id, action=action, issued_at=issued_at,
            ttl=ttl, nonce=nonce,
        )  # fmt: skip

    async def export_command_key(self, conn: AsyncConnection[Any], meter_id: str) -> bytes:
        return await self._secret(conn, command_key_name(meter_id))

    def wrap(self, name: str, secret: bytes) -> bytes:
        return to_blob(seal(self._keyring, name, secret))

    def unwrap(self, name: str, blob: bytes) -> bytes:
        sealed = from_blob(blob)
        return open_sealed(self._keyring_for(sealed.master_key_id), name, sealed)

    async def list_keys(self, conn: AsyncConnection[Any]) -> list[KeyInfo]:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT name, purpose, master_key_id, attributes, created_at FROM key_store"
                " ORDER BY name"
            )
            return [KeyInfo(**row) for row in await cur.fetchall()]


async def rotate_master_key(conn: AsyncConnection[Any], master_key_file: Path) -> tuple[str, int]:
    """Rotate the master key without stopping gateways; ``(new key id, keys re-wrapped)``.

    1. the file gets a new key in front of the old ones (running gateways can still unwrap
       rows under either), 2. every data key is re-wrapped under the new key in one
       transaction, 3. the file keeps only the new key. A crash between 2 and 3 leaves the old
       key in the file; running the command again finishes the job.
    """
    old = load_keyring(master_key_file)
    new = new_master_key()
    write_keyring(master_key_file, Keyring((new, *old.keys)))
    ring = Keyring((new, *old.keys))
    count = 0
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT name, master_key_id, wrapped_key, ciphertext FROM key_store"
                " ORDER BY name FOR UPDATE"
            )
            for name, key_id, wrapped, ciphertext in await cur.fetchall():
                fresh = rewrap(ring, name, Sealed(key_id, bytes(wrapped), bytes(ciphertext)))
                await conn.execute(
                    "UPDATE key_store SET master_key_id = %s, wrapped_key = %s,"
                    " rewrapped_at = now() WHERE name = %s",
                    (fresh.master_key_id, fresh.wrapped_key, name),
                )
                count += 1
    except (KeyStoreError, psycopg.Error):
        write_keyring(master_key_file, old)  # nothing was re-wrapped: back to the old file
        raise
    write_keyring(master_key_file, Keyring((new,)))
    log.info("master key rotated", extra={"master_key_id": new.key_id, "rewrapped": count})
    return new.key_id, count
