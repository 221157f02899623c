"""Billing policy settings: ``GATEWAY_BILLING_*`` variables, validated at start.

How a register rolls over between neighbouring readings, and how far it may jitter without
going back, are the detection feature's rules, so their settings come from
``GATEWAY_DETECTION_RULES``, not a second copy.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.billing.core import BillingPolicy, EstimateMethod
from gateway.detection.model import Rules
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
    detection_rules: dict[str, float] = Field(
        default_factory=dict, validation_alias="GATEWAY_DETECTION_RULES"
    )
    """The detection rule overrides (docs/detection.md); billing uses ``rollover_margin`` and
    ``rollback_resolution``."""

    def policy(self) -> BillingPolicy:
        rules = Rules.from_overrides(self.detection_rules)
        return BillingPolicy(
            interpolation_window=timedelta(hours=self.interpolation_hours),
            estimate_method=self.estimate_method,
            series_rollover_margin=rules.rollover_margin,
            rollback_resolution=rules.rollback_resolution,
        )


def _variable(loc: tuple[int | str, ...]) -> str:
    name = "_".join(str(p) for p in loc).upper()
    return name if name.startswith("GATEWAY_") else f"GATEWAY_BILLING_{name}"


def load_policy() -> BillingPolicy:
    """The billing policy from the environment; a bad value is a :class:`ConfigError`."""
    try:
        return BillingSettings().policy()
    except ValidationError as exc:
        problems = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid billing settings: {problems}") from None
    except ValueError as exc:  # a detection setting billing shares and cannot work with
        raise ConfigError(f"invalid billing settings: GATEWAY_DETECTION_RULES: {exc}") from None
