"""EA07: the Standard Transfer Algorithm (IEC 62055-41 §6.5.2, DOMAIN.md §2 "EA07 (STA)").

A 64-bit block cipher with a 64-bit key ``K`` (big-endian integer of its 8 bytes)::

    k = rotate_right_64(NOT K, 12)
    16 rounds:
        nibble i (bits 4i..4i+3) -> S2[n] if bit 4i+3 of k is 1 else S1[n]
        permute: output bit P[i] = input bit i
        k = rotate_left_64(k, 1)

Decryption runs the round keys backwards through the inverse permutation and inverse boxes.

Speed: bit-by-bit Python takes ~1 ms a block. Here one round is eight lookups: for every byte
position j and each of its four S-box selections (the key bits 8j+3 and 8j+7), a 256-entry
table maps the byte to the 64-bit word "substitute both nibbles, then permute", and a round
ORs the eight words. A key only chooses which of the four tables each byte uses per round, so
per-key set-up is 128 table references and no copying.
"""

from __future__ import annotations

from typing import Final

__all__ = ["S1", "S2", "P", "Sta"]

S1: Final = (14, 10, 7, 9, 12, 3, 2, 5, 13, 0, 15, 1, 4, 8, 6, 11)
S2: Final = (12, 8, 2, 13, 7, 6, 1, 3, 11, 5, 9, 15, 0, 4, 10, 14)
P: Final = (
    55, 42, 10, 18, 24, 21, 44, 35, 2, 22, 56, 43, 27, 58, 9, 50,
    6, 36, 12, 61, 37, 38, 53, 16, 62, 3, 7, 4, 32, 20, 63, 25,
    51, 52, 54, 33, 49, 19, 46, 29, 48, 31, 23, 30, 41, 28, 13, 5,
    40, 60, 39, 11, 15, 17, 1, 0, 57, 34, 59, 8, 47, 14, 45, 26,
)  # fmt: skip

_MASK64: Final = (1 << 64) - 1
_ROUNDS: Final = 16

_Table = tuple[int, ...]


def _inverse(box: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(box)
    for i, value in enumerate(box):
        inv[value] = i
    return tuple(inv)


_S1_INV: Final = _inverse(S1)
_S2_INV: Final = _inverse(S2)
_P_INV: Final = _inverse(P)


def _permute_byte_tables(perm: tuple[int, ...]) -> tuple[_Table, ...]:
    """tables[j][b] = the bit permutation of byte ``b`` placed at byte position ``j``."""
    tables = []
    for j in range(8):
        row = []
        for byte in range(256):
            word = 0
            for bit in range(8):
                if byte >> bit & 1:
                    word |= 1 << perm[8 * j + bit]
            row.append(word)
        tables.append(tuple(row))
    return tuple(tables)


def _substituted(byte: int, select: int, low: tuple[int, ...], high: tuple[int, ...]) -> int:
    """Substitute both nibbles of ``byte``; bit 0 / bit 1 of ``select`` pick box 2 for them."""
    lo_box = high if select & 1 else low
    hi_box = high if select & 2 else low
    return lo_box[byte & 15] | hi_box[byte >> 4] << 4


def _build_tables() -> tuple[
    tuple[tuple[_Table, ...], ...],
    tuple[tuple[_Table, ...], ...],
    tuple[_Table, ...],
    tuple[tuple[_Table, ...], ...],
]:
    perm = _permute_byte_tables(P)
    perm_inv = _permute_byte_tables(_P_INV)
    # encrypt[j][sel][b] = P(S_sel(b) << 8j)
    encrypt = tuple(
        tuple(tuple(perm[j][_substituted(b, sel, S1, S2)] for b in range(256)) for sel in range(4))
        for j in range(8)
    )
    # decrypt[j][sel][b] = P^-1(S^-1_sel(b) << 8j)
    decrypt = tuple(
        tuple(
            tuple(perm_inv[j][_substituted(b, sel, _S1_INV, _S2_INV)] for b in range(256))
            for sel in range(4)
        )
        for j in range(8)
    )
    # last[j][sel][b] = S^-1_sel(b) << 8j  (the final inverse substitution, no permutation)
    last = tuple(
        tuple(
            tuple(_substituted(b, sel, _S1_INV, _S2_INV) << (8 * j) for b in range(256))
            for sel in range(4)
        )
        for j in range(8)
    )
    return encrypt, decrypt, perm_inv, last


_ENC, _DEC, _PINV, _LAST = _build_tables()

_RoundTables = tuple[_Table, _Table, _Table, _Table, _Table, _Table, _Table, _Table]


def _selectors(round_key: int) -> list[int]:
    """Per byte j: bit 0 = key bit 8j+3 (low nibble), bit 1 = key bit 8j+7 (high nibble)."""
    return [(round_key >> (8 * j + 3) & 1) | (round_key >> (8 * j + 7) & 1) << 1 for j in range(8)]


def _pick(tables: tuple[tuple[_Table, ...], ...], round_key: int) -> _RoundTables:
    s = _selectors(round_key)
    return (
        tables[0][s[0]], tables[1][s[1]], tables[2][s[2]], tables[3][s[3]],
        tables[4][s[4]], tables[5][s[5]], tables[6][s[6]], tables[7][s[7]],
    )  # fmt: skip


class Sta:
    """The STA block cipher bound to one 8-byte key; blocks are 64-bit integers."""

    __slots__ = ("_dec_last", "_dec_rounds", "_enc_rounds", "_round_keys")

    def __init__(self, key: bytes) -> None:
        if len(key) != 8:
            raise ValueError("STA needs an 8-byte key")
        k = ~int.from_bytes(key, "big") & _MASK64
        k = (k >> 12 | k << 52) & _MASK64
        round_keys = []
        for _ in range(_ROUNDS):
            round_keys.append(k)
            k = (k << 1 | k >> 63) & _MASK64
        self._round_keys = tuple(round_keys)
        self._enc_rounds = tuple(_pick(_ENC, rk) for rk in round_keys)
        # Decryption tables are picked on first use: a vending key is mostly used to encrypt.
        self._dec_rounds: tuple[_RoundTables, ...] = ()
        self._dec_last: _RoundTables | None = None

    def __repr__(self) -> str:
        return "Sta(<key hidden>)"

    def encrypt(self, block: int) -> int:
        """Encrypt a 64-bit block."""
        d = block
        for t0, t1, t2, t3, t4, t5, t6, t7 in self._enc_rounds:
            d = (
                t0[d & 255] | t1[d >> 8 & 255] | t2[d >> 16 & 255] | t3[d >> 24 & 255]
                | t4[d >> 32 & 255] | t5[d >> 40 & 255] | t6[d >> 48 & 255] | t7[d >> 56]
            )  # fmt: skip
        return d

    def decrypt(self, block: int) -> int:
        """Decrypt a 64-bit block."""
        if self._dec_last is None:
            self._dec_rounds = tuple(_pick(_DEC, rk) for rk in reversed(self._round_keys[1:]))
            self._dec_last = _pick(_LAST, self._round_keys[0])
        p0, p1, p2, p3, p4, p5, p6, p7 = _PINV
        d = block
        z = (
            p0[d & 255] | p1[d >> 8 & 255] | p2[d >> 16 & 255] | p3[d >> 24 & 255]
            | p4[d >> 32 & 255] | p5[d >> 40 & 255] | p6[d >> 48 & 255] | p7[d >> 56]
        )  # fmt: skip
        for t0, t1, t2, t3, t4, t5, t6, t7 in self._dec_rounds:
            z = (
                t0[z & 255] | t1[z >> 8 & 255] | t2[z >> 16 & 255] | t3[z >> 24 & 255]
                | t4[z >> 32 & 255] | t5[z >> 40 & 255] | t6[z >> 48 & 255] | t7[z >> 56]
            )  # fmt: skip
        t0, t1, t2, t3, t4, t5, t6, t7 = self._dec_last
        return (
            t0[z & 255] | t1[z >> 8 & 255] | t2[z >> 16 & 255] | t3[z >> 24 & 255]
            | t4[z >> 32 & 255] | t5[z >> 40 & 255] | t6[z >> 48 & 255] | t7[z >> 56]
        )  # fmt: skip
