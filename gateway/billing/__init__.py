"""Billing reads: period reads and the billing export, person's reads, estimates, corrections.

``core`` and ``period`` are pure; ``store``, ``export``, ``reads`` and ``corrections`` are the
async shells over PostgreSQL; ``formats`` holds the file formats. See docs/billing.md.
"""

from gateway.billing.core import (
    BillingPolicy,
    BoundaryRead,
    EstimateMethod,
    Point,
    ReadMethod,
    ReadSource,
)
from gateway.billing.period import Period

__all__ = [
    "BillingPolicy",
    "BoundaryRead",
    "EstimateMethod",
    "Period",
    "Point",
    "ReadMethod",
    "ReadSource",
]
