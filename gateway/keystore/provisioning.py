"""Meters' provisioning files: what a meter is loaded with at the factory or installation.

One file per meter, ``<dir>/<meter_id>.json`` = ``{"meter_id": …, "command_key": "<64 hex>"}``,
written atomically with owner-only permissions. The simulated fleet reads the same files
(``firmware-sim run --provisioning DIR``), so commands signed by the gateway's key store verify
on the simulated meter. The directory is a hand-over point: treat it like the key material it
holds and clear it once meters are provisioned.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from gateway.keystore.base import KeyStore
from protocols.topics import METER_ID_PATTERN

__all__ = ["export_provisioning", "provisioning_path", "write_provisioning_file"]


def provisioning_path(directory: Path, meter_id: str) -> Path:
    if not METER_ID_PATTERN.fullmatch(meter_id):
        raise ValueError("bad meter id")
    return directory / f"{meter_id}.json"


def write_provisioning_file(directory: Path, meter_id: str, command_key: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = provisioning_path(directory, meter_id)
    tmp = directory / f".{meter_id}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            json.dump({"meter_id": meter_id, "command_key": command_key.hex()}, out)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


async def export_provisioning(
    conn: AsyncConnection[Any], keystore: KeyStore, directory: Path, meter_ids: Iterable[str]
) -> list[str]:
    """Give each meter a command key if it has none, and write its provisioning file."""
    written = []
    for meter_id in meter_ids:
        await keystore.ensure_command_key(conn, meter_id)
        key = await keystore.export_command_key(conn, meter_id)
        write_provisioning_file(directory, meter_id, key)
        written.append(meter_id)
    return written
