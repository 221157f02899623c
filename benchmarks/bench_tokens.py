"""Throughput of the STS token engine (pytest-benchmark).

Run: ``.venv/bin/pytest benchmarks/bench_tokens.py --benchmark-enable -q``

Targets (one core): credit token generation with a cached decoder key, EA07 >= 20 000/s and
EA11 >= 10 000/s; decoding at a similar rate; DKGA02 / DKGA04 derivations >= 20 000/s.
Two baselines make the figures comparable across machines: a bare ``int.to_bytes`` call and a
single DES block through ``cryptography`` (C code behind one Python call).
"""

from __future__ import annotations

from typing import Any

import pytest

from tokens import (
    DecoderKey,
    EncryptionAlgorithm,
    KeyParameters,
    KeyType,
    Medium,
    MeterNumber,
    TransferCredit,
    VendingKey,
    decode,
    dkga02,
    dkga04,
    encode,
)
from tokens.des import Des

KEY07 = DecoderKey.from_hex("e653341f9d5bf36f", "07")
KEY11 = DecoderKey.from_hex("f94b6ed353c3bfdb113e2d3a7ea3c41d", "11")
METER = MeterNumber.from_pan("600727000000000009")
PARAMS07 = KeyParameters(
    meter=METER, key_type=KeyType.UNIQUE, sgc="123457", ti=1, krn=1, ea=EncryptionAlgorithm.EA07
)
PARAMS11 = KeyParameters(
    meter=METER, key_type=KeyType.UNIQUE, sgc="123457", ti=1, krn=1, ea=EncryptionAlgorithm.EA11
)
VK02 = VendingKey.from_hex("02", "abababababababab")
VK04 = VendingKey.from_hex("04", "abababababababab949494949494949401234567")


def _credit_issuer(key: DecoderKey) -> Any:
    tid = iter(range(1, 1 << 24))

    def issue() -> str:
        record = TransferCredit(medium=Medium.ELECTRICITY, tenths=1234, tid=next(tid), rnd=7)
        return encode(record, key)

    return issue


def test_baseline_int_to_bytes(benchmark: Any) -> None:
    benchmark(int.to_bytes, 0x0559986300011, 8, "big")


def test_baseline_des_block(benchmark: Any) -> None:
    des = Des(bytes.fromhex("133457799bbcdff1"))
    benchmark(des.encrypt, 0x0123456789ABCDEF)


@pytest.mark.parametrize("key", [KEY07, KEY11], ids=["EA07", "EA11"])
def test_generate_credit_token(benchmark: Any, key: DecoderKey) -> None:
    token = benchmark(_credit_issuer(key))
    assert len(token) == 20


@pytest.mark.parametrize("key", [KEY07, KEY11], ids=["EA07", "EA11"])
def test_decode_credit_token(benchmark: Any, key: DecoderKey) -> None:
    token = encode(TransferCredit(medium=Medium.WATER, tenths=55, tid=99, rnd=1), key)
    record = benchmark(decode, token, key)
    assert record.tid == 99  # type: ignore[union-attr]


def test_dkga02(benchmark: Any) -> None:
    key = benchmark(dkga02, VK02, PARAMS07)
    assert len(key.key) == 8


@pytest.mark.parametrize("params", [PARAMS07, PARAMS11], ids=["EA07", "EA11"])
def test_dkga04(benchmark: Any, params: KeyParameters) -> None:
    key = benchmark(dkga04, VK04, params)
    assert len(key.key) == params.ea.key_bytes


def test_dkga02_and_first_token(benchmark: Any) -> None:
    """Derivation plus one token: the cost of a meter seen for the first time (EA07)."""

    def run() -> str:
        key = dkga02(VK02, PARAMS07)
        return encode(TransferCredit(medium=Medium.ELECTRICITY, tenths=10, tid=5, rnd=1), key)

    assert len(benchmark(run)) == 20
