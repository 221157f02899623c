"""Key custody: one store for every long-lived secret (STS vending keys, meter command keys).

:class:`KeyStore` is the interface (shaped for a PKCS#11 HSM); :class:`SoftwareKeyStore` keeps
keys in PostgreSQL under AES-256-GCM envelope encryption with a master key from
``GATEWAY_MASTER_KEY_FILE``; :mod:`gateway.keystore.provisioning` writes meters' provisioning
files.
"""

from gateway.keystore.base import (
    KeyInfo,
    KeyStore,
    VendingKeyId,
    command_key_name,
    vending_key_name,
)
from gateway.keystore.software import SoftwareKeyStore, rotate_master_key

__all__ = [
    "KeyInfo",
    "KeyStore",
    "SoftwareKeyStore",
    "VendingKeyId",
    "command_key_name",
    "rotate_master_key",
    "vending_key_name",
]
