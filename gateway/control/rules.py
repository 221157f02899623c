"""The credit-control rule core: an account, one of its meters, the policy and today's date in;
the next step, its reasons and the legal checks it passed out. Pure, no I/O.

The order of the checks is the by-law's:

1. a meter already under an action is released (reconnect / restore / unblock) as soon as the
   arrears are cleared, an arrangement is being kept, or the policy's share of the debt is paid;
2. an amount in dispute is never the ground for an action (Municipal Systems Act s102(2)): it
   is taken off the arrears before anything else is looked at;
3. a payment arrangement that is being kept stops the process;
4. arrears below the threshold, or not yet old enough, get nothing;
5. an indigent account that pays for its use above the free allocation gets nothing;
6. a notice, then a final notice, and no disconnection or restriction until the final notice
   period (at least 14 days after it reached the customer, Joseph v City of Johannesburg);
7. then: ``essential`` accounts only go on a review list; electricity postpaid is disconnected,
   electricity prepaid blocked at vending; water is restricted (never ``close_valve``, and
   never for an indigent account).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum

from gateway.control.policy import Policy

__all__ = [
    "ORDERS",
    "RELEASES",
    "AccountFacts",
    "Check",
    "Decision",
    "MeterFacts",
    "MeterState",
    "Step",
    "decide",
    "is_indigent",
]


class Step(StrEnum):
    NONE = "none"
    NOTICE = "notice"
    FINAL_NOTICE = "final_notice"
    DISCONNECT = "disconnect"
    BLOCK_VENDING = "block_vending"
    RESTRICT = "restrict"
    REVIEW = "review"
    RECONNECT = "reconnect"
    RESTORE = "restore"
    UNBLOCK_VENDING = "unblock_vending"


#: steps that act on a meter (orders), as opposed to notices and the review list
ORDERS = frozenset({Step.DISCONNECT, Step.BLOCK_VENDING, Step.RESTRICT})
RELEASES = frozenset({Step.RECONNECT, Step.RESTORE, Step.UNBLOCK_VENDING})


class MeterState(StrEnum):
    """What credit control has done to a meter."""

    NORMAL = "normal"
    DISCONNECTED = "disconnected"
    BLOCKED = "blocked"
    RESTRICTED = "restricted"


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """What the rules need to know about an account."""

    account_id: str
    arrears: Decimal
    arrears_since: date | None = None
    dispute_amount: Decimal = Decimal(0)
    dispute_open: bool = False
    arrangement_kept: bool = False
    indigent_from: date | None = None
    indigent_to: date | None = None
    essential: bool = False
    #: an indigent account that pays for its use above the free allocation
    pays_above_free_allocation: bool = False
    notice_served_on: date | None = None
    final_notice_served_on: date | None = None
    #: the arrears when the current action against the account started, and paid since
    debt_at_action: Decimal = Decimal(0)
    paid_since_action: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class MeterFacts:
    meter_id: str
    utility: str  # electricity | water | unknown
    payment: str  # prepaid | postpaid | unknown
    state: MeterState = MeterState.NORMAL


@dataclass(frozen=True, slots=True)
class Check:
    """One rule looked at: its name, whether the step may go ahead on it, and why."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Decision:
    account_id: str
    meter_id: str
    step: Step
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    #: the arrears that ground the step (arrears less any amount in dispute)
    ground: Decimal


def is_indigent(account: AccountFacts, today: date) -> bool:
    """Whether the account is on the indigent register on ``today``."""
    if account.indigent_from is None and account.indigent_to is None:
        return False
    starts = account.indigent_from or date.min
    ends = account.indigent_to or date.max
    return starts <= today <= ends


def _release_step(meter: MeterFacts) -> Step:
    if meter.state is MeterState.BLOCKED:
        return Step.UNBLOCK_VENDING
    if meter.state is MeterState.RESTRICTED:
        return Step.RESTORE
    return Step.RECONNECT


def _enforcement(meter: MeterFacts) -> tuple[Step, str]:
    if meter.utility == "water":
        return Step.RESTRICT, "water is restricted (trickle flow), never closed"
    if meter.utility == "electricity" and meter.payment == "prepaid":
        return Step.BLOCK_VENDING, "prepaid electricity is blocked at vending"
    if meter.utility == "electricity" and meter.payment == "postpaid":
        return Step.DISCONNECT, "postpaid electricity is disconnected"
    return Step.REVIEW, f"no rule for a {meter.payment} {meter.utility} meter: review"


def decide(account: AccountFacts, meter: MeterFacts, policy: Policy, today: date) -> Decision:
    """The next credit-control step for ``meter`` of ``account`` on ``today``."""
    checks: list[Check] = []
    disputed = account.dispute_amount if account.dispute_open else Decimal(0)
    ground = max(account.arrears - disputed, Decimal(0))

    def done(step: Step, *reasons: str) -> Decision:
        return Decision(account.account_id, meter.meter_id, step, reasons, tuple(checks), ground)

    if meter.state is not MeterState.NORMAL:
        paid_share = (
            account.paid_since_action * 100 / account.debt_at_action
            if account.debt_at_action > 0
            else Decimal(100)
        )
        if ground <= 0:
            checks.append(Check("arrears_cleared", True, "no arrears left to act on"))
            return done(_release_step(meter), "arrears cleared")
        if account.arrangement_kept:
            checks.append(Check("arrangement", True, "a payment arrangement is being kept"))
            return done(_release_step(meter), "payment arrangement made")
        if paid_share >= policy.reconnect_paid_share:
            checks.append(
                Check(
                    "paid_share",
                    True,
                    f"{paid_share:.1f}% of the debt paid (policy {policy.reconnect_paid_share}%)",
                )
            )
            return done(_release_step(meter), "policy share of the debt paid")
        checks.append(Check("paid_share", False, f"{paid_share:.1f}% of the debt paid"))
        return done(Step.NONE, f"meter stays {meter.state.value}")

    checks.append(
        Check(
            "dispute_excluded",
            True,
            f"R {disputed:.2f} in dispute excluded" if disputed else "nothing in dispute",
        )
    )
    if account.arrangement_kept:
        checks.append(Check("arrangement", False, "a payment arrangement is being kept"))
        return done(Step.NONE, "payment arrangement kept")
    checks.append(Check("arrangement", True, "no arrangement being kept"))
    if ground < policy.notice_threshold:
        checks.append(
            Check("arrears_threshold", False, f"R {ground:.2f} < R {policy.notice_threshold}")
        )
        return done(Step.NONE, "arrears below threshold" if not disputed else "amount in dispute")
    checks.append(
        Check("arrears_threshold", True, f"R {ground:.2f} >= R {policy.notice_threshold}")
    )
    age = (today - account.arrears_since).days if account.arrears_since else 0
    if age <= policy.notice_min_age_days:
        checks.append(
            Check("arrears_age", False, f"{age} days, not older than {policy.notice_min_age_days}")
        )
        return done(Step.NONE, "arrears too recent")
    checks.append(Check("arrears_age", True, f"{age} days > {policy.notice_min_age_days}"))
    indigent = is_indigent(account, today)
    if indigent and account.pays_above_free_allocation:
        checks.append(Check("indigent", False, "indigent and paying above the free allocation"))
        return done(Step.NONE, "indigent account pays for its use above the free allocation")
    checks.append(Check("indigent", True, "indigent" if indigent else "not indigent"))
    if account.notice_served_on is None:
        return done(Step.NOTICE, "arrears overdue: first notice")
    checks.append(
        Check("notice_served", True, f"notice reached the customer {account.notice_served_on}")
    )
    if account.final_notice_served_on is None:
        due = account.notice_served_on + timedelta(days=policy.final_notice_after_days)
        if today < due:
            return done(Step.NONE, f"final notice due {due}")
        return done(Step.FINAL_NOTICE, "still unpaid after the notice: final notice")
    earliest = account.final_notice_served_on + timedelta(days=policy.final_notice_days)
    if today < earliest:
        checks.append(
            Check("final_notice_period", False, f"no action before {earliest} (14 days' notice)")
        )
        return done(Step.NONE, "final notice period running")
    checks.append(
        Check(
            "final_notice_period",
            True,
            f"final notice reached the customer {account.final_notice_served_on},"
            f" {policy.final_notice_days} days passed",
        )
    )
    if account.essential:
        checks.append(Check("essential", False, "essential supply: never ordered"))
        return done(Step.REVIEW, "essential supply: for a person to decide")
    checks.append(Check("essential", True, "not an essential supply"))
    step, why = _enforcement(meter)
    return done(step, why)
