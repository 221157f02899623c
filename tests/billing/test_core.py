"""The pure billing core on plain values, with hand-computed expectations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.billing.core import (
    BillingPolicy,
    BoundaryRead,
    EstimateMethod,
    Point,
    ReadMethod,
    advance,
    classify_drops,
    daily_rate,
    estimate_value,
    interpolate,
    is_rollover,
    period_consumption,
    read_time_problem,
    register_modulus,
    resolve_boundary,
    shift_months,
    to_decimal,
    validate_read,
)
from gateway.billing.period import Period
from protocols.errors import UsageError

T0 = datetime(2026, 12, 1, tzinfo=UTC)
POLICY = BillingPolicy()


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_register_modulus_is_the_next_power_of_ten() -> None:
    assert register_modulus(99_990.0) == 100_000.0
    assert register_modulus(12_345.6) == 100_000.0
    assert register_modulus(100_000.0) == 1_000_000.0
    assert register_modulus(3.0) == 10.0


def test_rollover_only_from_the_top_to_the_bottom_of_the_range() -> None:
    assert is_rollover(99_990.0, 15.0, 0.1)
    assert not is_rollover(50_000.0, 15.0, 0.1)  # a fall from mid-range is a rollback
    assert not is_rollover(99_990.0, 50_000.0, 0.1)
    assert advance(99_990.0, 15.0, 0.1) == pytest.approx(25.0)
    assert advance(100.0, 130.5, 0.1) == pytest.approx(30.5)
    assert advance(500.0, 400.0, 0.1) is None


def test_a_registered_capacity_is_where_the_register_wraps() -> None:
    # a 16-bit counter (register_max 65 536) wraps far below the next power of ten
    assert register_modulus(65_500.0, 65_536.0) == 65_536.0
    assert register_modulus(65_500.0, None) == 100_000.0
    assert is_rollover(65_500.0, 20.0, 0.1, capacity=65_536.0)
    assert not is_rollover(65_500.0, 20.0, 0.1)  # at the power of ten it is a rollback
    assert advance(65_500.0, 20.0, 0.1, capacity=65_536.0) == pytest.approx(56.0)
    assert advance(65_500.0, 20.0, 0.1) is None
    # 2^32 Wh counted in kWh
    assert advance(4_294_960.0, 3.0, 0.01, capacity=4_294_967.0) == pytest.approx(10.0)
    # a register showing more than its registered capacity did not wrap at it
    assert not is_rollover(70_000.0, 5.0, 0.1, capacity=65_536.0)
    # the narrow margin of neighbouring readings: 1 % of 65 536 is 655.36
    assert is_rollover(65_000.0, 100.0, 0.01, capacity=65_536.0)
    assert not is_rollover(64_000.0, 100.0, 0.01, capacity=65_536.0)


def test_interpolation_across_a_registered_capacity() -> None:
    # 65 535 at 23:00, 2 at 02:00 on a 65 536 register: 3 over 3 h -> 65 536 = 0 at midnight
    before, after = Point(at(-1), 65_535.0), Point(at(2), 2.0)
    read = resolve_boundary(T0, [before], [after], POLICY, capacity=65_536.0)
    assert read is not None and read.method is ReadMethod.INTERPOLATED
    assert read.value == pytest.approx(0.0, abs=1e-9)
    assert interpolate(before, after, at(1), 0.01, capacity=65_536.0) == pytest.approx(1.0)
    assert resolve_boundary(T0, [before], [after], POLICY) is None  # 100 000: a rollback


def test_estimates_across_a_registered_capacity() -> None:
    first = Point(T0 - timedelta(days=30), 65_236.0)
    last = Point(T0 - timedelta(days=10), 64.0)  # 300 + 64 over 20 days
    assert daily_rate(first, last, POLICY, capacity=65_536.0) == pytest.approx(18.2)
    assert daily_rate(first, last, POLICY) is None
    # projected past the capacity the register shows the wrapped value, as the meter would
    basis = Point(T0 - timedelta(days=2), 65_530.0)
    assert estimate_value(T0, basis, 5.0, capacity=65_536.0) == pytest.approx(4.0)
    assert estimate_value(T0, basis, 5.0) == pytest.approx(65_540.0)  # digits unknown: no wrap
    # projected back across the wrap
    after = Point(T0 + timedelta(days=1), 3.0)
    assert estimate_value(T0, after, 5.0, capacity=65_536.0) == pytest.approx(65_534.0)


def test_period_consumption_across_a_wrap() -> None:
    # boundary reads a month apart on a 65 536 register; the series saw the wrap
    wrapped = period_consumption(65_400.0, 224.0, [(65_535.5, 0.5)], POLICY, capacity=65_536.0)
    assert wrapped.consumption == pytest.approx(360.0)
    assert (wrapped.rolled_over, wrapped.went_back) == (True, False)
    # nothing in between (person's reads, estimates): the two reads decide, with the wide margin
    unseen = period_consumption(99_100.0, 700.0, [], POLICY)
    assert unseen.consumption == pytest.approx(1_600.0)
    assert unseen.rolled_over
    # a meter exchanged at 93 010 for a new one: the two reads look like a wrap of 7 500 (wide
    # margin), but the series fell from mid-range without ever rolling over: it went back
    swap = period_consumption(93_000.0, 500.0, [(93_010.0, 0.0)], POLICY)
    assert (swap.consumption, swap.rolled_over, swap.went_back) == (None, False, True)
    # a fall from mid-range is never a wrap; a rise is consumption
    assert period_consumption(50_000.0, 500.0, [], POLICY).went_back
    plain = period_consumption(100.0, 130.0, [], POLICY)
    assert (plain.consumption, plain.rolled_over, plain.went_back) == (30.0, False, False)
    missing = period_consumption(None, 130.0, [(99_999.0, 1.0)], POLICY)
    assert (missing.consumption, missing.rolled_over) == (None, True)
    # a period that used 14 % of the register's range: outside the wide margin, but the series
    # saw the register go round once and fall nowhere else
    large = period_consumption(88_000.0, 2_000.0, [(99_999.6, 0.1)], POLICY)
    assert (large.consumption, large.rolled_over, large.went_back) == (14_000.0, True, False)
    # going round once and back once besides: not a confirmed wrap
    both = period_consumption(88_000.0, 2_000.0, [(99_999.6, 0.1), (5_000.0, 1_000.0)], POLICY)
    assert (both.consumption, both.went_back) == (None, True)


def test_a_fall_within_the_resolution_is_jitter() -> None:
    assert advance(1000.0004, 1000.0001, 0.1, resolution=0.001) == 0.0
    assert advance(1000.0004, 1000.0001, 0.1) is None
    assert advance(1000.0, 999.0, 0.1, resolution=0.001) is None
    # an idle register jittering across a boundary is interpolated, not refused
    jitter = resolve_boundary(T0, [Point(at(-1), 7.0004)], [Point(at(1), 7.0001)], POLICY)
    assert jitter is not None and jitter.value == pytest.approx(7.0004)
    assert classify_drops([(7.0004, 7.0001), (500.0, 480.0)], 0.01, resolution=0.001) == (0, 1)
    idle = period_consumption(7.0004, 7.0001, [(7.0004, 7.0001)], POLICY)
    assert (idle.consumption, idle.rolled_over, idle.went_back) == (0.0, False, False)
    prev = Point(T0, 1000.0004)
    ok = validate_read(
        ts=at(48),
        value=1000.0,
        previous=prev,
        following=None,
        max_per_day=50,
        margin=0.1,
        resolution=0.001,
    )
    assert ok.accepted


def test_interpolation_is_linear_in_time() -> None:
    # 100 at 22:00 the day before, 112 at 04:00: 12 over 6 h, 2 h to midnight -> 104
    value = interpolate(Point(at(-2), 100.0), Point(at(4), 112.0), T0, 0.1)
    assert value == pytest.approx(104.0)


def test_interpolation_across_a_wrap() -> None:
    # 99 990 at 23:00, 30 at 02:00 (wrapped at 100 000): 40 over 3 h, 1 h to midnight
    # -> 99 990 + 13.333 = 100 003.333, which the register shows as 3.333
    value = interpolate(Point(at(-1), 99_990.0), Point(at(2), 30.0), T0, 0.1)
    assert value == pytest.approx(3.333333, abs=1e-3)
    before = interpolate(Point(at(-1), 99_990.0), Point(at(2), 30.0), at(-0.5), 0.1)
    assert before == pytest.approx(99_996.666667, abs=1e-3)
    # past the wrap the value is brought back into the register's range
    later = interpolate(Point(at(-1), 99_990.0), Point(at(2), 30.0), at(1), 0.1)
    assert later == pytest.approx(16.666667, abs=1e-3)


def test_exact_reading_at_the_boundary_is_actual() -> None:
    read = resolve_boundary(T0, [Point(T0, 50.0)], [Point(T0, 50.0)], POLICY)
    assert read == BoundaryRead(50.0, ReadMethod.ACTUAL)


def test_telemetry_wins_a_tie_with_a_person_read() -> None:
    person = Point(T0, 49.0, ReadMethod.MANUAL)
    read = resolve_boundary(T0, [person, Point(T0, 50.0)], [], POLICY)
    assert read == BoundaryRead(50.0, ReadMethod.ACTUAL)


def test_person_read_at_the_boundary_keeps_its_method() -> None:
    read = resolve_boundary(T0, [Point(T0, 49.0, ReadMethod.CUSTOMER)], [], POLICY)
    assert read == BoundaryRead(49.0, ReadMethod.CUSTOMER)


def test_points_beyond_the_window_are_not_used() -> None:
    far = Point(at(-25), 10.0)
    near = Point(at(3), 13.0)
    assert resolve_boundary(T0, [far], [near], POLICY) is None
    wide = BillingPolicy(interpolation_window=timedelta(hours=30))
    # 10 at -25 h, 13 at +3 h: 3 over 28 h, 25 h in -> 10 + 75/28
    read = resolve_boundary(T0, [far], [near], wide)
    assert read is not None and read.method is ReadMethod.INTERPOLATED
    assert read.value == pytest.approx(10 + 75 / 28)


def test_one_sided_person_read_is_taken_as_the_boundary_read() -> None:
    read = resolve_boundary(T0, [], [Point(at(9), 321.5, ReadMethod.MANUAL)], POLICY)
    assert read == BoundaryRead(321.5, ReadMethod.MANUAL)
    # one-sided telemetry is not: that boundary is estimated
    assert resolve_boundary(T0, [Point(at(-3), 300.0)], [], POLICY) is None


def test_interpolation_refuses_a_rollback() -> None:
    assert resolve_boundary(T0, [Point(at(-1), 500.0)], [Point(at(1), 400.0)], POLICY) is None


def test_daily_rate_and_estimate() -> None:
    first = Point(T0 - timedelta(days=90), 1000.0)
    last = Point(T0 - timedelta(days=10), 1400.0)
    rate = daily_rate(first, last, POLICY)
    assert rate == pytest.approx(5.0)  # 400 over 80 days
    assert estimate_value(T0, last, 5.0) == pytest.approx(1450.0)
    assert daily_rate(last, Point(T0 - timedelta(days=8), 1410.0), POLICY) is None  # 2 days


def test_drops_are_split_into_rollovers_and_rollbacks() -> None:
    assert classify_drops([(99_999.0, 2.0), (500.0, 480.0), (700.0, 10.0)], 0.1) == (1, 2)


def test_validate_read() -> None:
    prev = Point(T0, 1000.0)
    ok = validate_read(
        ts=at(48), value=1020.0, previous=prev, following=None, max_per_day=50, margin=0.1
    )
    assert ok.accepted
    low = validate_read(
        ts=at(48), value=990.0, previous=prev, following=None, max_per_day=50, margin=0.1
    )
    assert (low.accepted, low.reason) == (False, "below_previous_read")
    # 2 days at 50/day allow 100; 150 is implausible
    high = validate_read(
        ts=at(48), value=1150.0, previous=prev, following=None, max_per_day=50, margin=0.1
    )
    assert (high.accepted, high.reason) == (False, "implausible_consumption")
    wrapped = validate_read(
        ts=at(48),
        value=5.0,
        previous=Point(T0, 99_990.0),
        following=None,
        max_per_day=50,
        margin=0.1,
    )
    assert wrapped.accepted
    backdated = validate_read(
        ts=at(-5),
        value=1100.0,
        previous=None,
        following=prev,
        max_per_day=50,
        margin=0.1,
    )
    assert (backdated.accepted, backdated.reason) == (False, "above_following_read")


def test_decimal_rounding_is_half_even_to_three_places() -> None:
    assert to_decimal(104.0) == Decimal("104.000")
    assert to_decimal(0.0005) == Decimal("0.000")
    assert to_decimal(0.0015) == Decimal("0.002")
    assert to_decimal(None) is None


def test_a_reads_time_lies_from_2000_up_to_3000() -> None:
    assert read_time_problem(datetime(2000, 1, 1, tzinfo=UTC)) is None
    assert read_time_problem(datetime(2999, 12, 31, 23, 59)) is None
    assert read_time_problem(datetime(1999, 12, 31, 23, 59, tzinfo=UTC)) == "is before 2000-01-01"
    # an instant near year 1 that is BC once in UTC
    assert read_time_problem(datetime.fromisoformat("0001-01-01T00:30+01:00")) is not None
    assert read_time_problem(datetime(1999, 12, 31, 23, 59)) is not None  # local, as written
    assert read_time_problem(datetime(3000, 1, 1, tzinfo=UTC)) == "is not before 3000-01-01"
    assert read_time_problem(datetime.fromisoformat("9999-12-31T23:00-05:00")) is not None


def test_shift_months_clamps_the_day() -> None:
    assert shift_months(datetime(2026, 5, 31, tzinfo=UTC), -3) == datetime(2026, 2, 28, tzinfo=UTC)
    assert shift_months(datetime(2026, 12, 1, tzinfo=UTC), -13) == datetime(2025, 11, 1, tzinfo=UTC)


def test_period_boundaries_are_local_midnight() -> None:
    period = Period.parse("2026-11")
    assert period.opening("Africa/Johannesburg") == datetime(2026, 10, 31, 22, tzinfo=UTC)
    assert period.closing("Africa/Johannesburg") == datetime(2026, 11, 30, 22, tzinfo=UTC)
    # New York leaves DST on 1 November 2026 at 02:00: midnight is still EDT (UTC-4)
    assert period.opening("America/New_York") == datetime(2026, 11, 1, 4, tzinfo=UTC)
    assert period.closing("America/New_York") == datetime(2026, 12, 1, 5, tzinfo=UTC)
    assert str(Period.parse("2026-12").next()) == "2027-01"
    assert str(Period.parse("2026-01").previous()) == "2025-12"
    assert Period.ending_at(datetime(2026, 11, 30, 22, tzinfo=UTC), "Africa/Johannesburg") == period
    for bad in ("2026-13", "2026-1", "26-11", "2026-11-01"):
        with pytest.raises(UsageError):
            Period.parse(bad)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BillingPolicy(interpolation_window=timedelta(0))
    assert BillingPolicy().estimate_method is EstimateMethod.LAST_3_MONTHS


def test_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.billing.settings import load_policy  # noqa: PLC0415
    from gateway.errors import ConfigError  # noqa: PLC0415

    monkeypatch.setenv("GATEWAY_BILLING_INTERPOLATION_HOURS", "6")
    monkeypatch.setenv("GATEWAY_BILLING_ESTIMATE_METHOD", "same_month_last_year")
    monkeypatch.setenv(
        "GATEWAY_DETECTION_RULES", '{"rollover_margin": 0.02, "rollback_resolution": 0.01}'
    )
    policy = load_policy()
    assert policy.interpolation_window == timedelta(hours=6)
    assert policy.estimate_method is EstimateMethod.SAME_MONTH_LAST_YEAR
    # neighbouring readings roll over, and jitter, as detection says they do: one setting
    assert (policy.series_rollover_margin, policy.rollover_margin) == (0.02, 0.1)
    assert policy.rollback_resolution == 0.01
    monkeypatch.setenv("GATEWAY_DETECTION_RULES", '{"rollover_margin": 0.5}')
    with pytest.raises(ConfigError, match="GATEWAY_DETECTION_RULES"):
        load_policy()
    monkeypatch.delenv("GATEWAY_DETECTION_RULES")
    monkeypatch.setenv("GATEWAY_BILLING_ESTIMATE_METHOD", "guess")
    with pytest.raises(ConfigError, match="GATEWAY_BILLING_ESTIMATE_METHOD"):
        load_policy()


registers = st.floats(min_value=0, max_value=89_999, allow_nan=False)
uses = st.floats(min_value=0, max_value=5_000, allow_nan=False)


@given(start=registers, first=uses, second=uses, fraction=st.floats(min_value=0, max_value=1))
def test_consumption_splits_at_any_interpolated_boundary(
    start: float, first: float, second: float, fraction: float
) -> None:
    """Consumption before plus after an interpolated boundary is the whole, across wraps."""
    modulus = 100_000.0
    start = modulus - 10_000 + start / 9  # near the top of a 5-digit register: may wrap
    end = (start + first + second) % modulus
    before, after = Point(at(-10), start), Point(at(10), end)
    boundary = at(-10 + 20 * fraction)
    value = interpolate(before, after, boundary, 0.1)
    assert value is not None and 0 <= value < modulus
    whole = advance(start, end, 0.1)
    left, right = advance(start, value, 0.1), advance(value, end, 0.1)
    assert whole is not None and left is not None and right is not None
    assert left + right == pytest.approx(whole, abs=1e-6)
    assert left == pytest.approx(whole * fraction, abs=1e-6)
