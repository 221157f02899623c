"""What an amount buys: debt recovery, fixed charges, VAT and inclining blocks (pure).

The order of deductions from the amount the customer pays (VAT inclusive, ZAR):

1. **Debt recovery**: ``share`` percent of the amount, rounded *down* to the cent and capped by
   the arrears, goes to the account's arrears (no VAT: it settles an existing debt).
2. **Fixed monthly charge**: the tariff's ``fixed_monthly`` (VAT exclusive) plus VAT, rounded
   half-up to the cent, less what this month's earlier purchases already paid towards it; as
   much of that as the rest of the amount covers.
3. **Energy (or water)**: the rest buys units. The month's cumulative purchases of the meter
   decide where in the inclining blocks the purchase starts; a purchase crossing a boundary is
   split across blocks. In each block the customer gets the whole tenths (STS resolution) that
   the money pays for at the block's VAT-inclusive rate, never a part tenth.
4. The credit is then lowered, if need be, to the nearest amount an STS token carries exactly
   (above 1 638.3 units the token's 16-bit field steps by 1, 10 or 100 units and the engine
   rounds up; here the purchase rounds down instead, so the token never carries more than was
   paid for). What is left below the price of one tenth stays with the municipality and is
   shown on the receipt as part of the energy charge.

VAT shown on the receipt is the VAT contained in the fixed charge and the energy money:
``taxable - round_half_up(taxable / (1 + vat_rate), cent)``.

Everything is ``Decimal`` and integer tenths; nothing here performs I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Final

from tokens.amount import AMOUNT_OFFSETS, MAX_AMOUNT

__all__ = [
    "CENT",
    "Block",
    "BlockUse",
    "Debt",
    "MonthToDate",
    "Quote",
    "Tariff",
    "price",
    "sts_floor",
]

CENT: Final = Decimal("0.01")
_ZERO: Final = Decimal(0)
_SCALES: Final = (1, 10, 100, 1000)


@dataclass(frozen=True, slots=True)
class Block:
    """Units ``lower`` < u ≤ ``upper`` of the month (``upper`` None: no limit) at ``rate``.

    ``rate`` is per unit (kWh or kl), VAT exclusive.
    """

    lower: Decimal
    upper: Decimal | None
    rate: Decimal


@dataclass(frozen=True, slots=True)
class Tariff:
    """A tariff version: its blocks in ascending order, VAT rate and fixed monthly charge."""

    tariff_id: int
    utility: str
    customer_class: str
    effective_from: date
    vat_rate: Decimal
    fixed_monthly: Decimal
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError("a tariff needs at least one block")
        if self.blocks[0].lower != 0:
            raise ValueError("the first block starts at 0")
        for before, after in zip(self.blocks, self.blocks[1:], strict=False):
            if before.upper is None or before.upper != after.lower:
                raise ValueError("blocks must be contiguous: each starts where the last ends")
        for block in self.blocks:
            if block.rate <= 0:
                raise ValueError("block rates must be positive")
            if block.upper is not None and block.upper <= block.lower:
                raise ValueError("a block's upper bound must be above its lower bound")
        if self.blocks[-1].upper is not None:
            raise ValueError("the last block must be open-ended")
        if not 0 <= self.vat_rate < 1:
            raise ValueError("VAT rate must be a fraction in [0, 1)")
        if self.fixed_monthly < 0:
            raise ValueError("the fixed monthly charge cannot be negative")

    @property
    def fixed_monthly_with_vat(self) -> Decimal:
        """The fixed monthly charge a customer pays, VAT included, to the cent."""
        return (self.fixed_monthly * (1 + self.vat_rate)).quantize(CENT, ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class MonthToDate:
    """What the meter's earlier purchases this calendar month already used."""

    units_tenths: int = 0
    fixed_paid: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class Debt:
    """The account's arrears and the percentage of each purchase applied to them."""

    arrears: Decimal = _ZERO
    share_percent: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class BlockUse:
    """Tenths bought in one block."""

    lower: Decimal
    upper: Decimal | None
    rate: Decimal
    tenths: int


@dataclass(frozen=True, slots=True)
class Quote:
    """The split of one amount: every part in ZAR except units (integer tenths)."""

    amount: Decimal
    debt_recovered: Decimal
    fixed: Decimal
    energy: Decimal
    vat: Decimal
    tenths: int
    blocks: tuple[BlockUse, ...]


def sts_floor(tenths: int) -> int:
    """The largest amount ≤ ``tenths`` that a credit token's 16-bit field carries exactly."""
    if tenths <= 0:
        return 0
    if tenths >= MAX_AMOUNT:
        return MAX_AMOUNT
    exponent = max(e for e, offset in enumerate(AMOUNT_OFFSETS) if offset <= tenths)
    offset, scale = AMOUNT_OFFSETS[exponent], _SCALES[exponent]
    return offset + (tenths - offset) // scale * scale


def _tenths(units: Decimal) -> int:
    return int((units * 10).to_integral_value(ROUND_FLOOR))


def _walk_blocks(money: Decimal, tariff: Tariff, start_tenths: int) -> tuple[int, list[BlockUse]]:
    factor = 1 + tariff.vat_rate
    position = start_tenths
    total = 0
    uses: list[BlockUse] = []
    for block in tariff.blocks:
        upper = None if block.upper is None else _tenths(block.upper)
        if upper is not None and position >= upper:
            continue
        price_per_tenth = block.rate * factor / 10
        affordable = int((money / price_per_tenth).to_integral_value(ROUND_FLOOR))
        room = affordable if upper is None else min(affordable, upper - position)
        if room > 0:
            uses.append(BlockUse(block.lower, block.upper, block.rate, room))
            money -= price_per_tenth * room
            position += room
            total += room
        if upper is None or position < upper:
            break
    return total, uses


def _trim(uses: list[BlockUse], excess: int) -> tuple[BlockUse, ...]:
    """Take ``excess`` tenths off the last blocks (after rounding to an STS amount)."""
    trimmed = list(uses)
    while excess > 0 and trimmed:
        last = trimmed.pop()
        keep = last.tenths - min(excess, last.tenths)
        excess -= last.tenths - keep
        if keep:
            trimmed.append(BlockUse(last.lower, last.upper, last.rate, keep))
    return tuple(trimmed)


def price(amount: Decimal, tariff: Tariff, month: MonthToDate, debt: Debt) -> Quote:
    """Split ``amount`` (VAT inclusive, whole cents) into debt, fixed charge, VAT and units."""
    if amount < 0 or amount != amount.quantize(CENT):
        raise ValueError("amount must be a non-negative number of whole cents")
    share = min(max(debt.share_percent, _ZERO), Decimal(100))
    recovered = min((amount * share / 100).quantize(CENT, ROUND_DOWN), max(debt.arrears, _ZERO))
    rest = amount - recovered
    fixed_due = max(tariff.fixed_monthly_with_vat - month.fixed_paid, _ZERO)
    fixed = min(fixed_due, rest)
    energy = rest - fixed
    bought, uses = _walk_blocks(energy, tariff, month.units_tenths)
    tenths = sts_floor(bought)
    blocks = _trim(uses, bought - tenths)
    taxable = fixed + energy
    vat = taxable - (taxable / (1 + tariff.vat_rate)).quantize(CENT, ROUND_HALF_UP)
    return Quote(
        amount=amount,
        debt_recovered=recovered,
        fixed=fixed,
        energy=energy,
        vat=vat,
        tenths=tenths,
        blocks=blocks,
    )
