"""Plausibility limits of person's reads: the most consumption per day a meter can have.

A read implying more use since the previous usable point than ``max_per_day`` × elapsed days
is held for review (``implausible_consumption``, :mod:`gateway.billing.reads`). Limits are
kept per utility and meter size class in ``billing_limits``; size ``*`` is the utility's
default, used for a meter whose size is unknown or has no limit of its own. Every change is
written to the audit log in the transaction that makes it, with the value it replaced.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

from psycopg import AsyncConnection

from gateway import audit
from gateway.billing.store import MAIN_REGISTER, UNITS
from gateway.errors import ValidationError

__all__ = [
    "ANY_SIZE",
    "MAX_LIMIT",
    "SIZE_PATTERN",
    "UTILITIES",
    "Limit",
    "list_limits",
    "set_limit",
]

ANY_SIZE: Final = "*"
SIZE_PATTERN: Final = r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,31})$"
"""A size class (``15mm``, ``80A-3ph``), or ``*`` for the utility's default."""
UTILITIES: Final = ("electricity", "water")
MAX_LIMIT: Final = 1e6
"""Largest limit accepted (per day, in the main register's unit)."""


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``max_per_day`` of ``unit`` per day for ``utility`` meters of size ``size``."""

    utility: str
    size: str
    max_per_day: float

    @property
    def unit(self) -> str:
        return f"{UNITS[MAIN_REGISTER[self.utility]]}/day"


def _check(utility: str, size: str, max_per_day: float) -> None:
    if utility not in UTILITIES:
        raise ValidationError(f"utility must be one of {', '.join(UTILITIES)}")
    if not re.fullmatch(SIZE_PATTERN, size):
        raise ValidationError("size must be '*' or 1-32 of [A-Za-z0-9_.-], not starting with [_.-]")
    if not (math.isfinite(max_per_day) and 0 < max_per_day <= MAX_LIMIT):
        raise ValidationError(f"max_per_day must be a number above 0 and at most {MAX_LIMIT:g}")


async def list_limits(conn: AsyncConnection[Any]) -> list[Limit]:
    """Every limit, by utility then size (``*`` first)."""
    cur = await conn.execute(
        "SELECT utility, size, max_per_day FROM billing_limits"
        " ORDER BY utility, size <> '*', size COLLATE \"C\""
    )
    return [Limit(*row) for row in await cur.fetchall()]


async def set_limit(
    conn: AsyncConnection[Any],
    utility: str,
    size: str,
    max_per_day: float,
    *,
    actor: str,
    source: str | None = None,
    request_id: str | None = None,
) -> tuple[Limit, float | None]:
    """Create or change a limit, audited; returns it and the value it replaced (None: new)."""
    _check(utility, size, max_per_day)
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT max_per_day FROM billing_limits WHERE utility = %s AND size = %s FOR UPDATE",
            (utility, size),
        )
        row = await cur.fetchone()
        previous: float | None = row[0] if row is not None else None
        await conn.execute(
            "INSERT INTO billing_limits (utility, size, max_per_day) VALUES (%s, %s, %s)"
            " ON CONFLICT (utility, size) DO UPDATE SET max_per_day = excluded.max_per_day",
            (utility, size, max_per_day),
        )
        await audit.record(
            conn,
            actor=actor,
            action="billing.limit.set",
            object=f"billing_limit:{utility}/{size}",
            outcome="created" if previous is None else "changed",
            source=source,
            request_id=request_id,
            detail={"max_per_day": max_per_day, "previous": previous},
        )
    return Limit(utility, size, max_per_day), previous
