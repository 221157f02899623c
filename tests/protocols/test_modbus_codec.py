"""Modbus register maps, float32 word orders and read planning (docs/protocol.md §9)."""

from __future__ import annotations

import math
import struct
from itertools import pairwise

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocols.errors import PayloadError, UsageError
from protocols.modbus import (
    DEFAULT_MAP,
    MAX_READ_REGISTERS,
    ReadBlock,
    RegisterMap,
    RegisterSpec,
    WordOrder,
    decode_block,
    decode_float32,
    encode_float32,
    plan_reads,
    registers_to_bytes,
)

# Hand-computed IEEE-754 single precision:
#   230.0  = 1.796875 × 2^7  -> sign 0, exponent 127+7 = 0x86, mantissa 0x660000 -> 0x43660000
#   -1.5   = -1.1b × 2^0     -> 0xBFC00000
#   12345.5 = 1.5069580078125 × 2^13 -> exponent 0x8C, mantissa 0x40E600 -> 0x4640E600
#   0.1    -> 0x3DCCCCCD (rounded)
KNOWN = [
    (230.0, 0x4366, 0x0000),
    (-1.5, 0xBFC0, 0x0000),
    (12345.5, 0x4640, 0xE600),
    (1.0, 0x3F80, 0x0000),
]


def swap_bytes(word: int) -> int:
    return (word & 0xFF) << 8 | word >> 8


@pytest.mark.parametrize(("value", "hi", "lo"), KNOWN)
def test_known_answers_in_every_word_order(value: float, hi: int, lo: int) -> None:
    expected = {
        WordOrder.ABCD: (hi, lo),
        WordOrder.CDAB: (lo, hi),
        WordOrder.BADC: (swap_bytes(hi), swap_bytes(lo)),
        WordOrder.DCBA: (swap_bytes(lo), swap_bytes(hi)),
    }
    for order, registers in expected.items():
        assert encode_float32(value, order) == registers, order
        assert decode_float32(*registers, order) == value, order


def test_230_volts_on_the_wire() -> None:
    assert encode_float32(230.0, WordOrder.ABCD) == (0x4366, 0x0000)
    assert encode_float32(230.0, WordOrder.CDAB) == (0x0000, 0x4366)
    assert encode_float32(230.0, WordOrder.BADC) == (0x6643, 0x0000)
    assert encode_float32(230.0, WordOrder.DCBA) == (0x0000, 0x6643)
    assert registers_to_bytes((0x4366, 0x0000)) == b"\x43\x66\x00\x00"


def test_point_one_rounds_to_float32() -> None:
    assert encode_float32(0.1, WordOrder.ABCD) == (0x3DCC, 0xCCCD)
    assert (
        decode_float32(0x3DCC, 0xCCCD, WordOrder.ABCD)
        == struct.unpack(">f", b"\x3d\xcc\xcc\xcd")[0]
    )


@given(st.floats(width=32, allow_nan=False), st.sampled_from(list(WordOrder)))
def test_float32_round_trip(value: float, order: WordOrder) -> None:
    assert decode_float32(*encode_float32(value, order), order) == value


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.sampled_from(list(WordOrder)))
def test_register_round_trip(first: int, second: int, order: WordOrder) -> None:
    value = decode_float32(first, second, order)
    assume(not math.isnan(value))  # NaN payload bits need not survive
    assert encode_float32(value, order) == (first, second)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_word_orders_are_the_documented_permutations(first: int, second: int) -> None:
    abcd = struct.pack(">HH", first, second)
    a, b, c, d = abcd
    for order, raw in {
        WordOrder.CDAB: bytes((c, d, a, b)),
        WordOrder.BADC: bytes((b, a, d, c)),
        WordOrder.DCBA: bytes((d, c, b, a)),
    }.items():
        # the registers that carry ABCD in `order` decode to the ABCD value
        regs = struct.unpack(">HH", raw)
        got = decode_float32(*regs, order)
        want = decode_float32(first, second, WordOrder.ABCD)
        assert got == want or (math.isnan(got) and math.isnan(want))


def test_bad_registers_and_values_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        decode_float32(0x10000, 0, WordOrder.ABCD)
    with pytest.raises(UsageError):
        encode_float32(1e39, WordOrder.ABCD)


def test_default_map_is_the_protocol_table() -> None:
    by_channel = {r.channel: (r.address, r.scale) for r in DEFAULT_MAP.registers}
    assert by_channel["32.7.0"] == (0x0000, 1.0)
    assert by_channel["21.7.0"] == (0x000C, 0.001)
    assert by_channel["1.7.0"] == (0x0034, 0.001)
    assert by_channel["14.7.0"] == (0x0046, 1.0)
    assert by_channel["1.8.0"] == (0x0048, 1.0)
    assert by_channel["24.2.1"] == (0x0100, 1.0)
    assert by_channel["24.4.0"] == (0x0202, 1.0)
    assert len(by_channel) == 18


def test_default_map_plan() -> None:
    blocks = plan_reads(DEFAULT_MAP.registers)
    assert [(b.address, b.count) for b in blocks] == [
        (0x0000, 18),
        (0x0034, 2),
        (0x0046, 6),
        (0x0100, 6),
        (0x0200, 4),
    ]
    bridged = plan_reads(DEFAULT_MAP.registers, max_gap=16)
    assert [(b.address, b.count) for b in bridged] == [
        (0x0000, 18),
        (0x0034, 24),
        (0x0100, 6),
        (0x0200, 4),
    ]
    assert bridged[1].has_gaps and not bridged[0].has_gaps


def test_plan_respects_the_request_size_limit() -> None:
    specs = [RegisterSpec("1.8.0", 0), RegisterSpec("2.8.0", 122), RegisterSpec("1.7.0", 123 + 1)]
    blocks = plan_reads(specs, max_gap=200)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 2)]
    with pytest.raises(UsageError):
        plan_reads(specs, max_count=126)


channels = sorted(
    [
        "1.8.0",
        "2.8.0",
        "1.7.0",
        "21.7.0",
        "41.7.0",
        "61.7.0",
        "32.7.0",
        "52.7.0",
        "72.7.0",
        "31.7.0",
        "51.7.0",
        "71.7.0",
        "14.7.0",
        "96.3.10",
        "24.2.1",
        "24.4.0",
        "water.flow",
        "credit",
    ]
)


@st.composite
def register_sets(draw: st.DrawFn) -> list[RegisterSpec]:
    count = draw(st.integers(1, len(channels)))
    gaps = draw(st.lists(st.integers(0, 140), min_size=count, max_size=count))
    specs, address = [], 0
    for channel, gap in zip(channels[:count], gaps, strict=True):
        address += gap
        specs.append(RegisterSpec(channel, address))
        address += 2
    return specs


@given(register_sets(), st.integers(0, 20), st.integers(2, MAX_READ_REGISTERS))
def test_plan_covers_every_register_within_limits(
    specs: list[RegisterSpec], max_gap: int, max_count: int
) -> None:
    blocks = plan_reads(specs, max_gap=max_gap, max_count=max_count)
    assert [s for b in blocks for s in b.registers] == specs
    for block in blocks:
        assert block.count <= max_count
        assert block.registers[0].address == block.address
        assert block.registers[-1].address + 2 == block.address + block.count
        for prev, nxt in pairwise(block.registers):
            assert nxt.address - (prev.address + 2) <= max_gap
    for prev_block, nxt_block in pairwise(blocks):
        # greedy: the next block could not have been merged into the previous one
        first = nxt_block.registers[0].address
        end = prev_block.address + prev_block.count
        assert first - end > max_gap or first + 2 - prev_block.address > max_count


def test_map_from_json_and_back() -> None:
    doc = {"1.8.0": {"address": 300, "scale": 0.001}, "32.7.0": {"address": 0}}
    parsed = RegisterMap.from_json(doc)
    assert [(r.channel, r.address, r.scale) for r in parsed.registers] == [
        ("32.7.0", 0, 1.0),
        ("1.8.0", 300, 0.001),
    ]
    assert RegisterMap.from_json(parsed.to_json()) == parsed


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({}, "non-empty"),
        ([], "non-empty"),
        ({"9.9.9": {"address": 0}}, "unknown channel"),
        ({"1.8.0": {"scale": 1.0}}, "no address"),
        ({"1.8.0": {"address": "0x48"}}, "integer"),
        ({"1.8.0": {"address": 65535}}, "0..65534"),
        ({"1.8.0": {"address": 1, "scale": 0}}, "non-zero"),
        ({"1.8.0": {"address": 1, "unit": "W"}}, "unknown keys"),
        ({"1.8.0": 72}, "object"),
        ({"1.8.0": {"address": 10}, "2.8.0": {"address": 11}}, "overlaps"),
    ],
)
def test_bad_maps_are_refused_with_a_reason(doc: object, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        RegisterMap.from_json(doc)


def test_decode_block_scales_and_validates() -> None:
    (block,) = plan_reads(
        [RegisterSpec("32.7.0", 0), RegisterSpec("21.7.0", 2, 0.001), RegisterSpec("1.8.0", 6)],
        max_gap=2,
    )
    assert block == ReadBlock(0, 8, block.registers)
    regs = [
        *encode_float32(230.0, WordOrder.CDAB),
        *encode_float32(1500.0, WordOrder.CDAB),
        0xFFFF,
        0xFFFF,  # bridged register content is ignored
        *encode_float32(12345.5, WordOrder.CDAB),
    ]
    out = decode_block(block, regs, WordOrder.CDAB)
    assert out.values == {"32.7.0": 230.0, "21.7.0": 1.5, "1.8.0": 12345.5}
    assert out.rejected == ()


def test_decode_block_rejects_bad_values_but_keeps_the_rest() -> None:
    (block,) = plan_reads([RegisterSpec("32.7.0", 0), RegisterSpec("1.8.0", 2)])
    nan = (0x7FC0, 0x0000)
    out = decode_block(block, [*encode_float32(5000.0, WordOrder.ABCD), *nan], WordOrder.ABCD)
    assert out.values == {}
    assert [(r.channel, r.reason, r.raw) for r in out.rejected] == [
        ("32.7.0", "out_of_range", b"\x45\x9c\x40\x00"),
        ("1.8.0", "bad_value", b"\x7f\xc0\x00\x00"),
    ]
    ok = decode_block(block, [*encode_float32(0.0, WordOrder.ABCD), *nan], WordOrder.ABCD)
    assert ok.values == {"32.7.0": 0.0}


def test_decode_block_refuses_a_short_reply() -> None:
    (block,) = plan_reads([RegisterSpec("32.7.0", 0)])
    with pytest.raises(PayloadError) as info:
        decode_block(block, [0x4366], WordOrder.ABCD)
    assert info.value.reason == "bad_shape"
