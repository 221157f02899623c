"""Command keys from the gateway's provisioning files (``<dir>/<meter_id>.json``).

The gateway generates each meter's 32-byte command key at registration and exports it as
``{"meter_id": …, "command_key": "<64 hex>"}``; a real meter is loaded with it at the factory or
at installation. A simulated meter looks its file up when a command arrives (the fleet may be
running before the meter is registered) and, once provisioned, verifies commands with that key
instead of its development key. A file is re-read only when it changes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from protocols.topics import METER_ID_PATTERN

__all__ = ["ProvisionedKeys"]

log = logging.getLogger(__name__)

_KEY_BYTES = 32


class ProvisionedKeys:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, tuple[float, bytes | None]] = {}

    def key_for(self, meter_id: str) -> bytes | None:
        """The meter's provisioned command key, or None if it has no (valid) file."""
        if not METER_ID_PATTERN.fullmatch(meter_id):
            return None
        path = self.directory / f"{meter_id}.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        cached = self._cache.get(meter_id)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        key: bytes | None = None
        try:
            body = json.loads(path.read_text(encoding="ascii"))
            candidate = bytes.fromhex(body["command_key"])
            if body.get("meter_id") == meter_id and len(candidate) == _KEY_BYTES:
                key = candidate
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass
        if key is None:
            log.warning("provisioning file of meter %s is unusable", meter_id)
        self._cache[meter_id] = (mtime, key)
        return key
