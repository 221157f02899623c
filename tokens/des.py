"""DES single-block primitive (FIPS 46-3) for DKGA02 and the deprecated EA09.

DES comes from ``cryptography``: single DES is Triple-DES with the key repeated three times,
in ECB mode on one block. ECB holds no state between blocks, so one encryptor and one
decryptor per key are reused for every block instead of being rebuilt each time.

EA09 (DES as token encryption) is deprecated by the STS Association and has no public vectors;
it is offered for old meters only.
"""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

__all__ = ["Des"]


class Des:
    """DES bound to one 8-byte key; blocks are 64-bit integers (big-endian bytes)."""

    __slots__ = ("_dec", "_enc")

    def __init__(self, key: bytes) -> None:
        if len(key) != 8:
            raise ValueError("DES needs an 8-byte key")
        cipher = Cipher(TripleDES(key * 3), modes.ECB())  # noqa: S305 - one block, by design
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()

    def __repr__(self) -> str:
        return "Des(<key hidden>)"

    def encrypt_bytes(self, block: bytes) -> bytes:
        """Encrypt one 8-byte block."""
        return self._enc.update(block)

    def decrypt_bytes(self, block: bytes) -> bytes:
        """Decrypt one 8-byte block."""
        return self._dec.update(block)

    def encrypt(self, block: int) -> int:
        """Encrypt a 64-bit block."""
        return int.from_bytes(self._enc.update(block.to_bytes(8, "big")), "big")

    def decrypt(self, block: int) -> int:
        """Decrypt a 64-bit block."""
        return int.from_bytes(self._dec.update(block.to_bytes(8, "big")), "big")
