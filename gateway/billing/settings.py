"""Billing policy settings: ``GATEWAY_BILLING_*`` variables, validated at start."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.billing.core import BillingPolicy, EstimateMethod
from gateway.errors import ConfigError

__all__ = ["BillingSettings", "load_policy"]


class BillingSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_BILLING_", case_sensitive=False, extra="ignore", frozen=True
    )

    interpolation_hours: float = Field(24.0, gt=0, le=24 * 31)
    """Farthest an actual read may be from a boundary to interpolate it (hours)."""
    estimate_method: EstimateMethod = EstimateMethod.LAST_3_MONTHS
    """Preferred estimate: ``last_3_months`` or ``same_month_last_year``."""

    def policy(self) -> BillingPolicy:
        return BillingPolicy(
            interpolation_window=timedelta(hours=self.interpolation_hours),
            estimate_method=self.estimate_method,
        )


def load_policy() -> BillingPolicy:
    """The billing policy from the environment; a bad value is a :class:`ConfigError`."""
    try:
        return BillingSettings().policy()
    except ValidationError as exc:
        problems = "; ".join(
            f"GATEWAY_BILLING_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid billing settings: {problems}") from None
