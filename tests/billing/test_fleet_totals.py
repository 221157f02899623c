"""A seeded fleet of irregular meters: the export's totals against the readings themselves.

Each meter reads every 15 minutes at its own offset (never on a boundary), some with an outage
of several hours across a boundary, and a few water registers wrap at 100 000. What each
period should bill is worked out here from the generated readings alone: the boundary reads by
straight-line interpolation between the readings either side, the consumption as the sum of
the advances between them.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

from gateway.billing.export import export_bytes
from gateway.billing.period import Period
from tests.billing.helpers import NOV_CLOSE, NOV_OPEN, add_meter, add_readings, csv_rows

WRAP = 100_000.0
OCT_OPEN = datetime(2026, 9, 30, 22, tzinfo=UTC)
DEC_CLOSE = datetime(2026, 12, 31, 22, tzinfo=UTC)
BOUNDARIES = (OCT_OPEN, NOV_OPEN, NOV_CLOSE, DEC_CLOSE)
PERIODS = (Period(2026, 10), Period(2026, 11), Period(2026, 12))
LATER = datetime(2027, 2, 1, tzinfo=UTC)


def _meter(rng: random.Random, wraps: bool) -> list[tuple[datetime, float]]:
    """Readings from 29 September to 2 January: (time, register) with register % WRAP."""
    ts = datetime(2026, 9, 29, tzinfo=UTC) + timedelta(minutes=rng.randrange(1, 15))
    outage = rng.choice(BOUNDARIES) if rng.random() < 0.5 else None
    total = WRAP - 400 if wraps else rng.uniform(0, 5000)
    points = []
    while ts < datetime(2027, 1, 2, tzinfo=UTC):
        if outage is None or abs(ts - outage) > timedelta(hours=5):
            points.append((ts, round(total % WRAP, 3)))
        ts += timedelta(minutes=15)
        total += rng.choice((0.0, rng.uniform(0, 0.4)))
    return points


def _at(points: list[tuple[datetime, float]], boundary: datetime) -> float:
    """The register at ``boundary``, unwrapped: linear between the readings either side."""
    before = max(p for p in points if p[0] <= boundary)
    after = min(p for p in points if p[0] >= boundary)
    if before[0] == boundary:
        return before[1]
    end = after[1] + (WRAP if after[1] < before[1] else 0)
    share = (boundary - before[0]) / (after[0] - before[0])
    return before[1] + share * (end - before[1])


def _advance(opening: float, closing: float) -> float:
    """What the register advanced by between two boundary reads (modulo a wrap)."""
    return (closing - opening) % WRAP


async def test_fleet_totals_equal_the_advance_of_the_readings(database_url: str) -> None:
    rng = random.Random(20261201)
    fleet: dict[str, tuple[str, list[tuple[datetime, float]]]] = {}
    for index in range(24):
        wraps = index % 8 == 7
        utility, channel = ("water", "24.2.1") if index % 2 else ("electricity", "1.8.0")
        fleet[f"F{index:02d}"] = (channel, _meter(rng, wraps and utility == "water"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        for meter_id, (channel, points) in fleet.items():
            add_meter(conn, meter_id, "water" if channel == "24.2.1" else "electricity")
            add_readings(conn, meter_id, channel, points)

    exported: dict[tuple[str, str], Decimal] = {}
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for period in PERIODS:
            data = b"".join(
                [c async for c in export_bytes(conn, period, file_format="csv", now=LATER)]
            )
            for row in csv_rows(data):
                assert row["opening_method"] in ("actual", "interpolated"), row
                assert row["closing_method"] in ("actual", "interpolated"), row
                exported[row["meter_id"], row["period"]] = Decimal(row["consumption"])
    assert len(exported) == len(fleet) * len(PERIODS)

    wrapped = 0
    for period, (opening_at, closing_at) in zip(
        PERIODS, itertools.pairwise(BOUNDARIES), strict=True
    ):
        expected_total = 0.0
        for meter_id, (_channel, points) in fleet.items():
            opening, closing = _at(points, opening_at), _at(points, closing_at)
            expected = _advance(opening % WRAP, closing % WRAP)
            wrapped += closing % WRAP < opening % WRAP
            # each row to its rounding (3 places); the fleet's total to the sum of those
            assert abs(exported[meter_id, str(period)] - Decimal(expected)) <= Decimal("0.0011")
            expected_total += expected
        total = sum(v for (_, p), v in exported.items() if p == str(period))
        assert abs(total - Decimal(expected_total)) <= Decimal("0.0011") * len(fleet)
    assert wrapped, "the seeded fleet was meant to wrap a register in some period"
    # consecutive periods share their boundary read: the quarter telescopes
    for meter_id, (_channel, points) in fleet.items():
        quarter = sum(exported[meter_id, str(p)] for p in PERIODS)
        first, last = _at(points, OCT_OPEN), _at(points, DEC_CLOSE)
        assert abs(quarter - Decimal(_advance(first % WRAP, last % WRAP))) <= Decimal("0.0033")
