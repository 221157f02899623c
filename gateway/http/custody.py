"""What HTTP handlers get for key custody: the key store (if configured) and where meters'
provisioning files go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from gateway.keystore.base import KeyStore

__all__ = ["Custody", "CustodyDep"]


@dataclass(frozen=True, slots=True)
class Custody:
    keystore: KeyStore | None = None
    """None when ``GATEWAY_MASTER_KEY_FILE`` is not set: no key is generated or used."""
    provisioning_dir: Path | None = None


async def _custody(request: Request) -> Custody:
    custody: Custody = request.app.state.custody
    return custody


CustodyDep = Annotated[Custody, Depends(_custody)]
