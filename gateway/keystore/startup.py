"""Opening the key store at service start: read the master key file, then prove it unwraps
what the database holds, before the gateway serves anything."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.errors import KeyStoreError
from gateway.keystore.software import SoftwareKeyStore

__all__ = ["open_keystore", "verify_keystore"]

log = logging.getLogger(__name__)


def open_keystore(master_key_file: Path | None) -> SoftwareKeyStore | None:
    """The key store, when a master key file is configured (reads and checks the file)."""
    return None if master_key_file is None else SoftwareKeyStore(master_key_file)


async def verify_keystore(
    pool: AsyncConnectionPool[Any], keystore: SoftwareKeyStore | None
) -> None:
    """KeyStoreError if stored keys cannot be unwrapped (wrong master key, or none configured).

    With the database unreachable at start the check is left to first use (every unwrap is
    authenticated), so an outage does not keep the gateway from starting.
    """
    try:
        async with pool.connection(timeout=10.0) as conn:
            if keystore is not None:
                count = await keystore.verify(conn)
                log.info(
                    "key store opened",
                    extra={"keys": count, "master_key_id": keystore.current_master_key_id},
                )
                return
            cur = await conn.execute("SELECT count(*) FROM key_store")
            row = await cur.fetchone()
    except (psycopg.Error, PoolTimeout) as exc:
        log.warning("could not check the key store at start (%s); checked on use", exc)
        return
    if row is not None and row[0]:
        raise KeyStoreError(
            f"the key store holds {row[0]} keys but GATEWAY_MASTER_KEY_FILE is not set"
        )
