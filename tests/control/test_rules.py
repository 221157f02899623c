"""The credit-control rule core, policy and execution window, on plain values."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.control.policy import DEFAULT_POLICY, policy_from_json, policy_to_json
from gateway.control.rules import (
    ORDERS,
    RELEASES,
    AccountFacts,
    MeterFacts,
    MeterState,
    Step,
    decide,
)
from gateway.control.window import in_window, is_public_holiday, next_window_start
from gateway.errors import ValidationError

TODAY = date(2026, 11, 30)
# arrears of R 1 200 since mid-August; notice served 2026-10-20, final notice 2026-11-05
DUE = AccountFacts(
    account_id="A1",
    arrears=Decimal("1200.00"),
    arrears_since=date(2026, 8, 15),
    notice_served_on=date(2026, 10, 20),
    final_notice_served_on=date(2026, 11, 5),
)
POST_E = MeterFacts("E1", "electricity", "postpaid")
PRE_E = MeterFacts("E2", "electricity", "prepaid")
WATER = MeterFacts("W1", "water", "postpaid")


def step(account: AccountFacts, meter: MeterFacts = POST_E, today: date = TODAY) -> Step:
    return decide(account, meter, DEFAULT_POLICY, today).step


def test_enforcement_per_utility_and_payment() -> None:
    assert step(DUE, POST_E) is Step.DISCONNECT
    assert step(DUE, PRE_E) is Step.BLOCK_VENDING
    assert step(DUE, WATER) is Step.RESTRICT
    decision = decide(DUE, POST_E, DEFAULT_POLICY, TODAY)
    passed = {c.name for c in decision.checks if c.passed}
    assert {"dispute_excluded", "arrears_threshold", "arrears_age", "notice_served"} <= passed
    assert {"final_notice_period", "essential"} <= passed


def test_notice_then_final_notice_then_fourteen_days() -> None:
    fresh = replace(DUE, notice_served_on=None, final_notice_served_on=None)
    assert step(fresh) is Step.NOTICE
    noticed = replace(fresh, notice_served_on=date(2026, 11, 20))
    assert step(noticed) is Step.NONE  # final notice due 2026-12-04
    assert step(noticed, today=date(2026, 12, 4)) is Step.FINAL_NOTICE
    final = replace(noticed, final_notice_served_on=date(2026, 12, 4))
    assert step(final, today=date(2026, 12, 17)) is Step.NONE  # day 13
    assert step(final, today=date(2026, 12, 18)) is Step.DISCONNECT  # day 14


def test_threshold_and_age() -> None:
    assert step(replace(DUE, arrears=Decimal("499.99"))) is Step.NONE
    assert step(replace(DUE, arrears=Decimal("500.00"))) is Step.DISCONNECT
    assert step(replace(DUE, arrears_since=date(2026, 10, 31))) is Step.NONE  # exactly 30 days
    assert step(replace(DUE, arrears_since=date(2026, 10, 30))) is Step.DISCONNECT


def test_disputed_amount_is_never_the_ground() -> None:
    disputed = replace(DUE, dispute_amount=Decimal("800.00"), dispute_open=True)
    decision = decide(disputed, POST_E, DEFAULT_POLICY, TODAY)
    assert decision.step is Step.NONE
    assert decision.ground == Decimal("400.00")
    # a dispute that is settled no longer protects the amount
    assert step(replace(disputed, dispute_open=False)) is Step.DISCONNECT
    # the undisputed rest still counts when it is above the threshold
    assert step(replace(disputed, dispute_amount=Decimal("100"))) is Step.DISCONNECT


def test_kept_arrangement_stops_the_process() -> None:
    assert step(replace(DUE, arrangement_kept=True)) is Step.NONE
    assert step(replace(DUE, arrangement_kept=True), WATER) is Step.NONE


def test_indigent_is_restricted_never_cut_and_paying_indigent_untouched() -> None:
    indigent = replace(DUE, indigent_from=date(2026, 1, 1), indigent_to=date(2026, 12, 31))
    assert step(indigent, WATER) is Step.RESTRICT
    assert step(replace(indigent, pays_above_free_allocation=True), WATER) is Step.NONE
    # outside the register's validity dates the account is not indigent
    lapsed = replace(indigent, indigent_to=date(2026, 6, 30), pays_above_free_allocation=True)
    assert step(lapsed, WATER) is Step.RESTRICT


def test_essential_only_goes_on_the_review_list() -> None:
    essential = replace(DUE, essential=True)
    for meter in (POST_E, PRE_E, WATER):
        assert step(essential, meter) is Step.REVIEW
    # notices still go out
    assert step(replace(essential, notice_served_on=None)) is Step.NOTICE


def test_release_on_payment_share_clearance_or_arrangement() -> None:
    cut = replace(POST_E, state=MeterState.DISCONNECTED)
    owing = replace(DUE, debt_at_action=Decimal("1000"), paid_since_action=Decimal("299.99"))
    assert step(owing, cut) is Step.NONE
    assert step(replace(owing, paid_since_action=Decimal("300")), cut) is Step.RECONNECT
    assert step(replace(owing, arrears=Decimal(0)), cut) is Step.RECONNECT
    assert step(replace(owing, arrangement_kept=True), cut) is Step.RECONNECT
    blocked = replace(PRE_E, state=MeterState.BLOCKED)
    restricted = replace(WATER, state=MeterState.RESTRICTED)
    assert step(replace(owing, arrears=Decimal(0)), blocked) is Step.UNBLOCK_VENDING
    assert step(replace(owing, arrears=Decimal(0)), restricted) is Step.RESTORE


def test_policy_round_trip_and_validation() -> None:
    data = policy_to_json(DEFAULT_POLICY)
    assert data["notice_threshold"] == "500.00"
    assert data["window_days"] == ["mon", "tue", "wed", "thu"]
    assert data["window_start"] == "08:00"
    assert policy_from_json(data) == DEFAULT_POLICY
    raised = policy_from_json({"prepaid_recovery_share": "100", "fleet_share_limit": "10"})
    assert raised.prepaid_recovery_share == Decimal(100)
    with pytest.raises(ValidationError) as caught:
        policy_from_json(
            {"final_notice_days": 7, "prepaid_recovery_share": "50", "bogus": 1, "time_zone": "X/Y"}
        )
    fields = {p.field for p in caught.value.fields}
    assert fields == {"final_notice_days", "prepaid_recovery_share", "bogus", "time_zone"}


def at(text: str) -> datetime:
    """A local South African time as an aware UTC instant."""
    local = datetime.fromisoformat(text + "+02:00")
    return local.astimezone(UTC)


def test_execution_window_days_hours_and_holidays() -> None:
    policy = DEFAULT_POLICY
    assert in_window(at("2026-11-30T08:00"), policy)  # Monday
    assert not in_window(at("2026-11-30T07:59"), policy)
    assert not in_window(at("2026-11-30T15:00"), policy)
    assert not in_window(at("2026-12-04T10:00"), policy)  # Friday
    # 16 December (Day of Reconciliation) is a Wednesday in 2026; the 15th is the day before
    assert is_public_holiday(date(2026, 12, 16))
    assert not in_window(at("2026-12-16T10:00"), policy)
    assert not in_window(at("2026-12-15T10:00"), policy)
    assert in_window(at("2026-12-14T10:00"), policy)
    # Friday 15:00 -> the next opening is Monday 08:00 local
    assert next_window_start(at("2026-12-04T15:00"), policy) == at("2026-12-07T08:00")
    # Monday 14 December after hours: Tue 15th and Wed 16th are closed, Thu 17th opens
    assert next_window_start(at("2026-12-14T16:00"), policy) == at("2026-12-17T08:00")
    inside = at("2026-11-30T09:30")
    assert next_window_start(inside, policy) == inside


amounts = st.decimals(min_value=0, max_value=100_000, places=2)
days = st.dates(min_value=date(2025, 1, 1), max_value=date(2027, 12, 31))


@st.composite
def accounts(draw: st.DrawFn) -> AccountFacts:
    return AccountFacts(
        account_id="A",
        arrears=draw(amounts),
        arrears_since=draw(st.none() | days),
        dispute_amount=draw(amounts),
        dispute_open=draw(st.booleans()),
        arrangement_kept=draw(st.booleans()),
        indigent_from=draw(st.none() | days),
        indigent_to=draw(st.none() | days),
        essential=draw(st.booleans()),
        pays_above_free_allocation=draw(st.booleans()),
        notice_served_on=draw(st.none() | days),
        final_notice_served_on=draw(st.none() | days),
        debt_at_action=draw(amounts),
        paid_since_action=draw(amounts),
    )


meters = st.builds(
    MeterFacts,
    st.just("M"),
    st.sampled_from(["electricity", "water", "unknown"]),
    st.sampled_from(["prepaid", "postpaid", "unknown"]),
    st.sampled_from(list(MeterState)),
)


@settings(max_examples=400, deadline=None)
@given(accounts(), meters, days)
def test_rule_invariants(account: AccountFacts, meter: MeterFacts, today: date) -> None:
    decision = decide(account, meter, DEFAULT_POLICY, today)
    if decision.step in ORDERS:
        assert not account.essential
        assert not account.arrangement_kept
        assert meter.state is MeterState.NORMAL
        disputed = account.dispute_amount if account.dispute_open else Decimal(0)
        assert account.arrears - disputed >= DEFAULT_POLICY.notice_threshold
        assert account.final_notice_served_on is not None
        assert today >= account.final_notice_served_on + timedelta(days=14)
    if meter.utility == "water":
        assert decision.step not in {Step.DISCONNECT, Step.BLOCK_VENDING}
    if decision.step in RELEASES:
        assert meter.state is not MeterState.NORMAL
