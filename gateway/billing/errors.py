"""Errors of the billing feature, under the gateway's tree::

gateway.errors.GatewayError
└── BillingError
    ├── ReadConflictError    a read with the same key is stored with another value
    ├── ReadFileError        a bulk read file cannot be read at all (not a bad line)
    └── IncompleteFileError  an export file is cut off or damaged (no valid trailer / footer)
"""

from __future__ import annotations

from gateway.errors import ConflictError, GatewayError

__all__ = ["BillingError", "IncompleteFileError", "ReadConflictError", "ReadFileError"]


class BillingError(GatewayError):
    """Root of the billing feature's errors."""


class ReadConflictError(BillingError, ConflictError):
    """The same meter register, instant and source already has a read with another value
    (HTTP 409)."""


class ReadFileError(BillingError):
    """A bulk read file is unusable as a whole (missing header columns, not UTF-8 text)."""


class IncompleteFileError(BillingError):
    """An export file is not the whole file the gateway wrote: cut off or damaged."""
