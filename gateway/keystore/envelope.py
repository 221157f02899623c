"""Envelope encryption of secrets (pure): AES-256-GCM under a data key, the data key under a
master key.

::

    secret ──AES-256-GCM(data key, aad="secret|"+name)──▶ ciphertext   (stored)
    data key ──AES-256-GCM(master key, aad="data-key|"+name)──▶ wrapped key   (stored)
    master key ── GATEWAY_MASTER_KEY_FILE, never in the database; rows name it by fingerprint

Each secret has its own random data key; rotating the master key re-wraps the data keys and
leaves the ciphertexts alone. Both layers bind the secret's name as associated data, so a row
copied under another name does not decrypt. Failures say which key and never show key bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import KeyStoreError

__all__ = [
    "MASTER_KEY_BYTES",
    "Keyring",
    "MasterKey",
    "Sealed",
    "from_blob",
    "load_keyring",
    "new_master_key",
    "open_sealed",
    "rewrap",
    "seal",
    "to_blob",
    "write_keyring",
]

MASTER_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12


@dataclass(frozen=True, slots=True)
class MasterKey:
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != MASTER_KEY_BYTES:
            raise KeyStoreError("a master key is 32 bytes (64 hex digits)")

    @property
    def key_id(self) -> str:
        """Fingerprint naming this key in the database (reveals nothing about the key)."""
        return hmac.new(self.secret, b"gateway master key id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id})"


@dataclass(frozen=True, slots=True)
class Keyring:
    """The master keys a process holds: the first wraps new data keys, all can unwrap."""

    keys: tuple[MasterKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyStoreError("the master key file holds no key")

    @property
    def current(self) -> MasterKey:
        return self.keys[0]

    def get(self, key_id: str) -> MasterKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A secret as stored: which master key, the wrapped data key, the ciphertext."""

    master_key_id: str
    wrapped_key: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


_BLOB_VERSION: Final = 1
_KEY_ID_LEN: Final = 16


def to_blob(sealed: Sealed) -> bytes:
    """One self-contained byte string: version, master key id, wrapped key, ciphertext."""
    key_id = sealed.master_key_id.encode("ascii")
    if len(key_id) != _KEY_ID_LEN:
        raise KeyStoreError("bad master key id")
    return (
        bytes([_BLOB_VERSION])
        + key_id
        + len(sealed.wrapped_key).to_bytes(2, "big")
        + sealed.wrapped_key
        + sealed.ciphertext
    )


def from_blob(blob: bytes) -> Sealed:
    header = 1 + _KEY_ID_LEN + 2
    if len(blob) < header or blob[0] != _BLOB_VERSION:
        raise KeyStoreError("not a wrapped secret of this key store")
    size = int.from_bytes(blob[1 + _KEY_ID_LEN : header], "big")
    if len(blob) < header + size:
        raise KeyStoreError("truncated wrapped secret")
    try:
        key_id = blob[1 : 1 + _KEY_ID_LEN].decode("ascii")
    except UnicodeDecodeError:
        raise KeyStoreError("not a wrapped secret of this key store") from None
    return Sealed(key_id, blob[header : header + size], blob[header + size :])


def new_master_key() -> MasterKey:
    return MasterKey(secrets.token_bytes(MASTER_KEY_BYTES))


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)


def seal(keyring: Keyring, name: str, plaintext: bytes) -> Sealed:
    """Encrypt ``plaintext`` under a fresh data key wrapped by the current master key."""
    data_key = AESGCM.generate_key(bit_length=256)
    master = keyring.current
    return Sealed(
        master_key_id=master.key_id,
        wrapped_key=_encrypt(master.secret, data_key, b"data-key|" + name.encode()),
        ciphertext=_encrypt(data_key, plaintext, b"secret|" + name.encode()),
    )


def _unwrap(keyring: Keyring, name: str, sealed: Sealed) -> bytes:
    master = keyring.get(sealed.master_key_id)
    if master is None:
        raise KeyStoreError(
            f"key {name!r} is wrapped under master key {sealed.master_key_id}, which the master"
            " key file does not hold"
        )
    try:
        return _decrypt(master.secret, sealed.wrapped_key, b"data-key|" + name.encode())
    except InvalidTag:
        raise KeyStoreError(
            f"cannot unwrap key {name!r}: wrong master key or a tampered row"
        ) from None


def open_sealed(keyring: Keyring, name: str, sealed: Sealed) -> bytes:
    """Decrypt a sealed secret; KeyStoreError if the master key is wrong or the row altered."""
    data_key = _unwrap(keyring, name, sealed)
    try:
        return _decrypt(data_key, sealed.ciphertext, b"secret|" + name.encode())
    except InvalidTag:
        raise KeyStoreError(f"cannot decrypt key {name!r}: the row was altered") from None


def rewrap(keyring: Keyring, name: str, sealed: Sealed) -> Sealed:
    """The same secret with its data key wrapped under the current master key."""
    data_key = _unwrap(keyring, name, sealed)
    master = keyring.current
    return Sealed(
        master_key_id=master.key_id,
        wrapped_key=_encrypt(master.secret, data_key, b"data-key|" + name.encode()),
        ciphertext=sealed.ciphertext,
    )


def load_keyring(path: Path) -> Keyring:
    """Read a master key file: one key per line as 64 hex digits, current first; ``#`` comments.

    Refuses a file that others than its owner's group may read.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(
            f"cannot read the master key file {path}: {type(exc).__name__}"
        ) from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise KeyStoreError(f"the master key file {path} is readable by others; chmod 600 it")
    keys = []
    for number, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            raw = bytes.fromhex(line)
        except ValueError:
            raise KeyStoreError(f"{path} line {number}: not hex") from None
        if len(raw) != MASTER_KEY_BYTES:
            raise KeyStoreError(f"{path} line {number}: a master key is 64 hex digits")
        keys.append(MasterKey(raw))
    return Keyring(tuple(keys))


def write_keyring(path: Path, keyring: Keyring) -> None:
    """Replace the master key file atomically (owner-only permissions)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write("# gateway master keys: the first wraps new keys; keep this file secret\n")
            for key in keyring.keys:
                out.write(key.secret.hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
