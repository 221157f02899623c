"""The municipality's per-sale rules that are not about money (pure).

* **Free basic units** are due to a meter whose account is on the indigent register on the
  sale's local date, once per calendar month.
* **Key changes**: a meter whose recorded key data differ from what its supply group now
  requires (a new key revision, a move to another supply group or tariff index, or a meter
  still on the 1993 base date, whose TIDs ran out on 2024-11-24) gets the key-change tokens
  first. :func:`key_change_target` says which key data the meter must move to, or None.
* The sale's calendar **month** is taken in the deployment's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from zoneinfo import ZoneInfo

from tokens.keys import KeyParameters
from tokens.meter_number import MeterNumber
from tokens.tid import BaseDate

__all__ = [
    "StsData",
    "SupplyGroup",
    "free_units_due",
    "key_change_target",
    "local_date",
    "month_of",
]


@dataclass(frozen=True, slots=True)
class StsData:
    """A meter's STS key data as recorded (what the meter holds)."""

    sgc: str
    krn: int
    ti: int
    key_type: int
    base_date: int
    ea: str
    dkga: str

    def params(self, meter: MeterNumber) -> KeyParameters:
        """The decoder key parameters of ``meter`` under this key data."""
        return KeyParameters(
            meter=meter,
            key_type=self.key_type,  # type: ignore[arg-type]  # normalised by KeyParameters
            sgc=self.sgc,
            ti=self.ti,
            krn=self.krn,
            base_date=BaseDate(self.base_date),
            ea=self.ea,  # type: ignore[arg-type]  # normalised by KeyParameters
        )

    def as_json(self) -> dict[str, str | int]:
        return {
            "sgc": self.sgc,
            "krn": self.krn,
            "ti": self.ti,
            "key_type": self.key_type,
            "base_date": self.base_date,
            "ea": self.ea,
            "dkga": self.dkga,
        }


@dataclass(frozen=True, slots=True)
class SupplyGroup:
    """A supply group's current vending key revision and base date."""

    sgc: str
    krn: int
    base_date: int


def key_change_target(
    current: StsData,
    group: SupplyGroup | None,
    *,
    target_sgc: str | None = None,
    target_ti: int | None = None,
) -> StsData | None:
    """The key data the meter must move to, or None when it is up to date.

    ``group`` is the supply group the meter belongs to after the move (``target_sgc`` when
    set, else its own). Without a recorded supply group the meter keeps its revision, and a
    1993 base date moves to 2014.
    """
    sgc = target_sgc or current.sgc
    ti = current.ti if target_ti is None else target_ti
    if group is not None:
        krn, base = group.krn, group.base_date
    else:
        krn = current.krn
        base = BaseDate.Y2014 if current.base_date == BaseDate.Y1993 else current.base_date
    if current.base_date == BaseDate.Y1993 and base == BaseDate.Y1993:
        base = BaseDate.Y2014
    target = replace(current, sgc=sgc, ti=ti, krn=krn, base_date=int(base))
    return None if target == current else target


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    """The calendar date of ``instant`` in the deployment's time zone."""
    return instant.astimezone(zone).date()


def month_of(day: date) -> date:
    """The first day of ``day``'s calendar month (the key of monthly allowances)."""
    return day.replace(day=1)


def free_units_due(
    *,
    indigent_from: date | None,
    indigent_to: date | None,
    on_register: bool,
    today: date,
    issued_this_month: bool,
) -> bool:
    """True when the monthly free basic units are due today.

    ``on_register`` says the account is on the indigent register at all (an account with
    neither date set is not); the dates bound its validity when given.
    """
    if not on_register or issued_this_month:
        return False
    if indigent_from is not None and today < indigent_from:
        return False
    return indigent_to is None or today <= indigent_to
