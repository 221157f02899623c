"""The credit-control policy: thresholds, notice periods, vending shares, the execution window
and the limits of a run, as one frozen value.

The defaults follow South African law and the City of Tshwane's practice (see
docs/credit-control.md). A policy is stored in the database as numbered versions
(:mod:`gateway.control.store`); this module only converts it to and from its JSON form and
validates it, with no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import FieldProblem, ValidationError

__all__ = ["DEFAULT_POLICY", "Policy", "policy_from_json", "policy_to_json"]

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Policy:
    """One version of the credit-control policy."""

    #: arrears at or above this amount (ZAR) …
    notice_threshold: Decimal = Decimal("500.00")
    #: … and older than this many days get a notice
    notice_min_age_days: int = 30
    #: days after the notice reached the customer before the final notice
    final_notice_after_days: int = 14
    #: no disconnection or restriction until this many days after the final notice reached
    #: the customer (Joseph v City of Johannesburg, 2009)
    final_notice_days: int = 14
    #: share (percent) of each prepaid purchase that goes to arrears while blocked: 60 or 100
    prepaid_recovery_share: Decimal = Decimal("60")
    #: share (percent) of the debt that, once paid, ends a block or orders reconnection
    reconnect_paid_share: Decimal = Decimal("30")
    #: fee (ZAR) added to the account on reconnection or restoration
    reconnection_fee: Decimal = Decimal("0.00")
    #: execution window: local days and hours in the policy's time zone
    window_days: tuple[str, ...] = ("mon", "tue", "wed", "thu")
    window_start: time = time(8, 0)
    window_end: time = time(15, 0)
    time_zone: str = "Africa/Johannesburg"
    #: no orders on a public holiday nor on the day before one
    skip_holidays: bool = True
    holiday_country: str = "ZA"
    #: at most this many commands to meters per minute
    commands_per_minute: int = 60
    #: a run may not plan orders for more than this share (percent) of the fleet
    fleet_share_limit: Decimal = Decimal("5")
    #: a command counts as unconfirmed after this long without a matching meter state
    confirm_timeout_s: int = 300
    #: command expiry, as signed into the command
    command_ttl_s: int = 600
    #: attempts with a new id and nonce after the first, before ``unconfirmed``
    command_retries: int = 3
    #: water restriction, never closing the valve, for an indigent account
    indigent_water_action: str = "restrict"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


DEFAULT_POLICY = Policy()


def _decimal(name: str, value: Any, problems: list[FieldProblem]) -> Decimal:
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        problems.append(FieldProblem(name, "must be a decimal number"))
        return Decimal(0)
    if not out.is_finite() or out < 0:
        problems.append(FieldProblem(name, "must be a non-negative number"))
    return out


def _integer(name: str, value: Any, problems: list[FieldProblem], *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        problems.append(FieldProblem(name, f"must be an integer >= {low}"))
        return low
    return value


def _clock(name: str, value: Any, problems: list[FieldProblem]) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        problems.append(FieldProblem(name, "must be a time HH:MM"))
        return time(0)


def policy_from_json(data: Mapping[str, Any], base: Policy = DEFAULT_POLICY) -> Policy:
    """The policy ``base`` with the fields given in ``data`` replaced; every bad field is
    reported at once as a :class:`ValidationError`."""
    known = {f.name for f in fields(Policy)}
    problems = [FieldProblem(k, "unknown policy field") for k in data if k not in known]
    changes: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            continue
        if name in {
            "notice_threshold",
            "prepaid_recovery_share",
            "reconnect_paid_share",
            "reconnection_fee",
            "fleet_share_limit",
        }:
            changes[name] = _decimal(name, value, problems)
        elif name in {"window_start", "window_end"}:
            changes[name] = _clock(name, value, problems)
        elif name == "window_days":
            days = tuple(str(d).lower() for d in value) if isinstance(value, list) else ()
            if not days or any(d not in _WEEKDAYS for d in days):
                problems.append(FieldProblem(name, "must be a list of mon..sun"))
            changes[name] = days
        elif name in {"skip_holidays"}:
            if not isinstance(value, bool):
                problems.append(FieldProblem(name, "must be true or false"))
            changes[name] = bool(value)
        elif name in {"time_zone", "holiday_country", "indigent_water_action"}:
            changes[name] = str(value)
        else:
            low = 1 if name in {"commands_per_minute", "confirm_timeout_s", "command_ttl_s"} else 0
            changes[name] = _integer(name, value, problems, low=low)
    policy = replace(base, **changes)
    _check(policy, problems)
    if problems:
        raise ValidationError("the credit-control policy is not valid", problems)
    return policy


def _check(policy: Policy, problems: list[FieldProblem]) -> None:
    if policy.prepaid_recovery_share not in (Decimal(60), Decimal(100)):
        problems.append(FieldProblem("prepaid_recovery_share", "must be 60 or 100"))
    for name in ("reconnect_paid_share", "fleet_share_limit"):
        if getattr(policy, name) > 100:
            problems.append(FieldProblem(name, "is a percentage 0-100"))
    if policy.final_notice_days < 14:
        problems.append(FieldProblem("final_notice_days", "the law requires at least 14 days"))
    if policy.window_end <= policy.window_start:
        problems.append(FieldProblem("window_end", "must be after window_start"))
    if policy.indigent_water_action != "restrict":
        problems.append(FieldProblem("indigent_water_action", "indigent water is only restricted"))
    try:
        ZoneInfo(policy.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(FieldProblem("time_zone", "must be an IANA time zone"))
    if policy.holiday_country != "ZA":
        problems.append(FieldProblem("holiday_country", "only ZA is supported"))


def policy_to_json(policy: Policy) -> dict[str, Any]:
    """The policy as JSON values (decimals and times as strings)."""
    out: dict[str, Any] = {}
    for name, value in asdict(policy).items():
        if isinstance(value, Decimal):
            out[name] = format(value, "f")
        elif isinstance(value, time):
            out[name] = value.strftime("%H:%M")
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out
