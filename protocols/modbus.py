"""Modbus TCP register maps and float32 decoding (docs/protocol.md §9), as pure functions.

Meters polled over Modbus expose IEEE-754 float32 values in pairs of 16-bit input registers
(function code 4). The four bytes ``A B C D`` of the big-endian float travel in the device's
word order (recorded per meter in the registry)::

    float32 230.0 = 0x43 0x66 0x00 0x00 = A B C D

    order   register n   register n+1      230.0 on the wire
    ABCD    A B          C D               0x4366 0x0000   (SDM630 default, big-endian)
    CDAB    C D          A B               0x0000 0x4366   (word swap)
    BADC    B A          D C               0x6643 0x0000   (byte swap)
    DCBA    D C          B A               0x0000 0x6643   (little-endian)

Register map JSON (the ``meters.register_map`` column)
------------------------------------------------------
``NULL`` means :data:`DEFAULT_MAP`, the SDM630-style map of §9. Otherwise the column holds the
device's *complete* map (it replaces the default, it is not merged with it), an object keyed by
channel (``protocols.channels.CHANNELS``)::

    {"1.8.0":  {"address": 72, "scale": 1.0},
     "1.7.0":  {"address": 52, "scale": 0.001},
     "32.7.0": {"address": 0}}

* ``address`` (required): integer 0-65534, the first of the value's two input registers
  (0-based protocol address, as on the wire: 0x0048 is 72).
* ``scale`` (optional, default 1.0): finite, non-zero; the channel value is the decoded float
  times ``scale`` (0.001 converts a register in W to the channel's kW).

Two channels may not share a register. Anything else is refused with :class:`UsageError`
naming the offending entry: a wrong map is a configuration error, not a device fault.

Reading plan
------------
:func:`plan_reads` groups a map's registers into as few FC04 requests as possible: at most
:data:`MAX_READ_REGISTERS` (125, the protocol limit) registers per request, bridging holes of up
to ``max_gap`` unused registers. Devices answer exception 2 for a read that touches a register
they do not implement, so a caller that gets exception 2 for a bridged block re-plans with
``max_gap=0``, and one that gets it for a gap-free block reads its values one by one.

Decoding
--------
:func:`decode_block` turns the registers of one block into channel values, each validated with
:func:`protocols.telemetry.check_value` (range, finiteness). A value that fails is returned as a
:class:`Rejection` with its wire bytes and reason, so the caller can store the good values and
dead-letter the bad one; a reply of the wrong length is a :class:`PayloadError`.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Final

from protocols.channels import CHANNELS
from protocols.errors import PayloadError, UsageError
from protocols.telemetry import check_value

__all__ = [
    "DEFAULT_MAP",
    "DEFAULT_MAX_GAP",
    "MAX_READ_REGISTERS",
    "BlockValues",
    "ReadBlock",
    "RegisterMap",
    "RegisterSpec",
    "Rejection",
    "WordOrder",
    "decode_block",
    "decode_float32",
    "encode_float32",
    "plan_reads",
    "registers_to_bytes",
]

MAX_READ_REGISTERS: Final = 125
"""Modbus application protocol v1.1b3 §6.4: quantity of input registers 1 to 125 (0x7D)."""
DEFAULT_MAX_GAP: Final = 8
"""Unused registers a read may bridge: reading 8 spare registers (16 bytes) is cheaper than a
second round trip, and stays well below the gaps between the §9 groups (16 and more)."""
MAX_MAP_ENTRIES: Final = 256
_MAX_ADDRESS: Final = 0xFFFE  # a float32 needs registers address and address + 1


class WordOrder(enum.StrEnum):
    """Position of the bytes ``A B C D`` of a big-endian float32 in two registers (§9)."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


# order -> (register pack format, register swap, float unpack format):
# pack the two registers with the first format (swapped if asked), read the bytes as a float.
_LAYOUT: Final[Mapping[WordOrder, tuple[struct.Struct, bool, struct.Struct]]] = {
    WordOrder.ABCD: (struct.Struct(">HH"), False, struct.Struct(">f")),
    WordOrder.CDAB: (struct.Struct(">HH"), True, struct.Struct(">f")),
    WordOrder.BADC: (struct.Struct("<HH"), False, struct.Struct(">f")),
    WordOrder.DCBA: (struct.Struct(">HH"), False, struct.Struct("<f")),
}


def decode_float32(first: int, second: int, order: WordOrder) -> float:
    """The float32 held in registers ``first`` (address n) and ``second`` (n + 1)."""
    regs, swap, flt = _LAYOUT[order]
    try:
        raw = regs.pack(second, first) if swap else regs.pack(first, second)
    except struct.error as exc:
        raise UsageError(f"registers must be 0..65535, got {first}, {second}") from exc
    value: float = flt.unpack(raw)[0]
    return value


def encode_float32(value: float, order: WordOrder) -> tuple[int, int]:
    """Registers (n, n + 1) holding ``value`` rounded to float32 (for test servers)."""
    regs, swap, flt = _LAYOUT[order]
    try:
        first, second = regs.unpack(flt.pack(value))
    except (struct.error, OverflowError) as exc:
        raise UsageError(f"{value!r} does not fit a float32") from exc
    return (second, first) if swap else (first, second)


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """Registers as they travel on the wire (each big-endian), e.g. for a dead letter."""
    return struct.pack(f">{len(registers)}H", *registers)


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One channel of a register map: a float32 at ``address``, times ``scale``."""

    channel: str
    address: int
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise UsageError(f"register map: unknown channel {self.channel[:40]!r}")
        if isinstance(self.address, bool) or not isinstance(self.address, int):
            raise UsageError(f"register map: {self.channel} address must be an integer")
        if not 0 <= self.address <= _MAX_ADDRESS:
            raise UsageError(f"register map: {self.channel} address {self.address} not 0..65534")
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, int | float)
            or not math.isfinite(self.scale)
            or self.scale == 0
        ):
            raise UsageError(f"register map: {self.channel} scale must be finite and non-zero")


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A device's registers, sorted by address; no two channels share a register."""

    registers: tuple[RegisterSpec, ...]

    def __post_init__(self) -> None:
        if not self.registers:
            raise UsageError("register map: no registers")
        if len(self.registers) > MAX_MAP_ENTRIES:
            raise UsageError(f"register map: more than {MAX_MAP_ENTRIES} registers")
        ordered = tuple(sorted(self.registers, key=lambda r: r.address))
        object.__setattr__(self, "registers", ordered)
        channels = [r.channel for r in ordered]
        if len(set(channels)) != len(channels):
            raise UsageError("register map: a channel appears twice")
        for prev, spec in pairwise(ordered):
            if spec.address < prev.address + 2:
                raise UsageError(
                    f"register map: {spec.channel} at {spec.address} overlaps"
                    f" {prev.channel} at {prev.address}"
                )

    @classmethod
    def from_json(cls, document: object) -> RegisterMap:
        """Parse the ``register_map`` JSON format described in the module docstring."""
        if not isinstance(document, dict) or not document:
            raise UsageError("register map: must be a non-empty JSON object keyed by channel")
        specs = []
        for channel, entry in document.items():
            if not isinstance(entry, dict):
                raise UsageError(f"register map: {str(channel)[:40]} must map to an object")
            unknown = set(entry) - {"address", "scale"}
            if unknown:
                raise UsageError(f"register map: {channel} has unknown keys {sorted(unknown)}")
            if "address" not in entry:
                raise UsageError(f"register map: {channel} has no address")
            specs.append(RegisterSpec(channel, entry["address"], entry.get("scale", 1.0)))
        return cls(tuple(specs))

    def to_json(self) -> dict[str, dict[str, float]]:
        return {r.channel: {"address": r.address, "scale": r.scale} for r in self.registers}


_KW: Final = 0.001  # the device reports W, the channel is kW
DEFAULT_MAP: Final = RegisterMap(
    (
        RegisterSpec("32.7.0", 0x0000),
        RegisterSpec("52.7.0", 0x0002),
        RegisterSpec("72.7.0", 0x0004),
        RegisterSpec("31.7.0", 0x0006),
        RegisterSpec("51.7.0", 0x0008),
        RegisterSpec("71.7.0", 0x000A),
        RegisterSpec("21.7.0", 0x000C, _KW),
        RegisterSpec("41.7.0", 0x000E, _KW),
        RegisterSpec("61.7.0", 0x0010, _KW),
        RegisterSpec("1.7.0", 0x0034, _KW),
        RegisterSpec("14.7.0", 0x0046),
        RegisterSpec("1.8.0", 0x0048),
        RegisterSpec("2.8.0", 0x004A),
        RegisterSpec("24.2.1", 0x0100),
        RegisterSpec("water.flow", 0x0102),
        RegisterSpec("credit", 0x0104),
        RegisterSpec("96.3.10", 0x0200),
        RegisterSpec("24.4.0", 0x0202),
    )
)
"""The SDM630-style map of docs/protocol.md §9 (electricity and water registers; a device
answers exception 2 for those it does not implement)."""


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One FC04 request: ``count`` registers from ``address``, holding ``registers``."""

    address: int
    count: int
    registers: tuple[RegisterSpec, ...]

    @property
    def has_gaps(self) -> bool:
        return self.count != 2 * len(self.registers)


def plan_reads(
    registers: Iterable[RegisterSpec],
    *,
    max_count: int = MAX_READ_REGISTERS,
    max_gap: int = DEFAULT_MAX_GAP,
) -> tuple[ReadBlock, ...]:
    """Group ``registers`` into the fewest blocks of ≤ ``max_count`` registers with holes of
    ≤ ``max_gap`` unused registers.

    Greedy from the lowest address is optimal here: a block that is feasible for registers
    i..j stays feasible without register i, so extending each block as far as possible never
    needs more blocks than any other grouping.
    """
    if not 2 <= max_count <= MAX_READ_REGISTERS:
        raise UsageError(f"max_count must be 2..{MAX_READ_REGISTERS}")
    if max_gap < 0:
        raise UsageError("max_gap must not be negative")
    blocks: list[ReadBlock] = []
    current: list[RegisterSpec] = []
    start = end = 0  # current block covers [start, end)
    for spec in sorted(registers, key=lambda r: r.address):
        if current and spec.address < end:
            raise UsageError(f"registers overlap at address {spec.address}")
        if current and spec.address - end <= max_gap and spec.address + 2 - start <= max_count:
            current.append(spec)
            end = spec.address + 2
            continue
        if current:
            blocks.append(ReadBlock(start, end - start, tuple(current)))
        current, start, end = [spec], spec.address, spec.address + 2
    if current:
        blocks.append(ReadBlock(start, end - start, tuple(current)))
    return tuple(blocks)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A value the device sent that failed validation, with its wire bytes."""

    channel: str
    address: int
    raw: bytes
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class BlockValues:
    values: dict[str, float]
    rejected: tuple[Rejection, ...]


def decode_block(block: ReadBlock, registers: Sequence[int], order: WordOrder) -> BlockValues:
    """Channel values (scaled, validated) from the registers a device returned for ``block``."""
    if len(registers) != block.count:
        raise PayloadError(
            "bad_shape",
            f"asked for {block.count} registers at {block.address}, got {len(registers)}",
        )
    values: dict[str, float] = {}
    rejected: list[Rejection] = []
    for spec in block.registers:
        offset = spec.address - block.address
        first, second = registers[offset], registers[offset + 1]
        try:
            values[spec.channel] = check_value(
                spec.channel, decode_float32(first, second, order) * spec.scale
            )
        except PayloadError as exc:
            rejected.append(
                Rejection(
                    spec.channel,
                    spec.address,
                    registers_to_bytes((first, second)),
                    exc.reason,
                    str(exc),
                )
            )
    return BlockValues(values, tuple(rejected))
