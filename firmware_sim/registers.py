"""A meter's cumulative register as the display shows it, with its fault transforms.

The metrology counts ``value``; what the meter *reports* may differ: a stuck register freezes,
a rollback subtracts an offset, an old register wraps at its maximum. Pure state, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Register"]


@dataclass(slots=True)
class Register:
    value: float
    """What the metrology has counted (never decreases)."""
    offset: float = 0.0
    frozen: float | None = None
    modulus: float | None = None

    def shown(self) -> float:
        raw = self.frozen if self.frozen is not None else self.value + self.offset
        if self.modulus is not None:
            raw %= self.modulus
        return round(raw, 3)

    def freeze(self) -> None:
        self.frozen = self.value + self.offset

    def unfreeze(self) -> None:
        self.frozen = None

    def roll_back(self, amount: float) -> float:
        """Drop the shown value by ``amount`` (not below 0); return the drop applied."""
        drop = min(amount, self.value + self.offset)
        self.offset -= drop
        return drop

    def set_near_limit(self, limit: float, lead: float) -> None:
        """Make the register show ``limit - lead`` and wrap at ``limit``."""
        self.offset = (limit - lead) - self.value
        self.modulus = limit
