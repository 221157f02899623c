"""The municipality's vending parameters (from the ``GATEWAY_VENDING_*`` settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from gateway.settings import Settings

__all__ = ["VendingConfig"]


@dataclass(frozen=True, slots=True)
class VendingConfig:
    """The municipality's vending parameters."""

    time_zone: str = "Africa/Johannesburg"
    """Calendar months (blocks, fixed charges, free units) are taken in this zone."""
    min_amount: Decimal = Decimal("5.00")
    max_amount: Decimal = Decimal("10000.00")
    free_electricity_kwh: Decimal = Decimal(100)
    free_water_kl: Decimal = Decimal(12)
    reversal_window: timedelta = timedelta(minutes=10)
    retry_wait: timedelta = timedelta(seconds=5)
    """How long a retry waits for the same request still in flight before ``in_progress``."""
    lock_wait: timedelta = timedelta(seconds=30)
    """How long a request, once its idempotency record is in, waits for a row another
    transaction holds (a meter, a vendor's float) before it gives up as unavailable."""
    db_wait: timedelta = timedelta(seconds=1)
    """How long a request waits for a pooled database connection before it is refused as
    ``vending_unavailable`` (HTTP 503 with ``Retry-After``): ``GATEWAY_HTTP_DB_WAIT_MS``."""
    key_expiry: int = 255
    """KEN written into key changes (255: no expiry)."""
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", ZoneInfo(self.time_zone))

    @classmethod
    def from_settings(cls, settings: Settings) -> VendingConfig:
        """The deployment's vending parameters from the ``GATEWAY_VENDING_*`` settings."""
        return cls(
            time_zone=settings.vending_time_zone,
            min_amount=settings.vending_min_amount,
            max_amount=settings.vending_max_amount,
            free_electricity_kwh=settings.vending_free_electricity_kwh,
            free_water_kl=settings.vending_free_water_kl,
            reversal_window=timedelta(seconds=settings.vending_reversal_window_s),
            db_wait=timedelta(milliseconds=settings.http_db_wait_ms),
        )

    def free_tenths(self, utility: str) -> int:
        allowance = self.free_electricity_kwh if utility == "electricity" else self.free_water_kl
        return int(allowance * 10)
