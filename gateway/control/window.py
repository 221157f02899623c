"""The execution window: when a disconnection or restriction may be carried out.

Default: Monday to Thursday, 08:00-15:00 local time, never on a South African public holiday
nor on the day before one, so that a customer can still pay and be reconnected the same day.
Public holidays come from the maintained ``holidays`` package (including days observed when a
holiday falls on a Sunday), never from a hand-kept list. Pure: instants in, answers out.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache

import holidays

from gateway.control.policy import Policy

__all__ = ["in_window", "is_public_holiday", "next_window_start"]

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@lru_cache(maxsize=64)
def _holidays(country: str, year: int) -> holidays.HolidayBase:
    return holidays.country_holidays(country, years=year)


def is_public_holiday(day: date, country: str = "ZA") -> bool:
    """Whether ``day`` is a public holiday (as observed) in ``country``."""
    return day in _holidays(country, day.year)


def _day_allowed(day: date, policy: Policy) -> bool:
    if _WEEKDAYS[day.weekday()] not in policy.window_days:
        return False
    if policy.skip_holidays:
        country = policy.holiday_country
        if is_public_holiday(day, country) or is_public_holiday(day + timedelta(days=1), country):
            return False
    return True


def in_window(moment: datetime, policy: Policy) -> bool:
    """Whether an order may execute at ``moment`` (an aware instant)."""
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware")
    local = moment.astimezone(policy.zone)
    if not _day_allowed(local.date(), policy):
        return False
    return policy.window_start <= local.time().replace(tzinfo=None) < policy.window_end


def next_window_start(moment: datetime, policy: Policy) -> datetime:
    """``moment`` itself when inside the window, otherwise the next instant the window opens."""
    if in_window(moment, policy):
        return moment
    local = moment.astimezone(policy.zone)
    day = local.date()
    for offset in range(0, 60):
        candidate_day = day + timedelta(days=offset)
        if not _day_allowed(candidate_day, policy):
            continue
        opens = datetime.combine(candidate_day, policy.window_start, tzinfo=policy.zone)
        if opens > moment:
            return opens
    raise ValueError("the execution window never opens in the next 60 days")
