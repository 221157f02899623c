"""Errors of the vending service: one subtree, each refusal with its code and HTTP status.

::

    gateway.errors.GatewayError
    └── VendingError                 code, status
        ├── UnknownMeterError             unknown_meter            404
        ├── NotPrepaidError               not_prepaid              409
        ├── MeterNotConfiguredError       meter_not_configured     409  (no STS key data)
        ├── MeterBlockedError             meter_blocked            403
        ├── AmountTooSmallError           amount_too_small         422
        ├── AmountTooLargeError           amount_too_large         422
        ├── InvalidAmountError            invalid_amount           422
        ├── InsufficientFloatError        insufficient_float       402
        ├── NoTariffError                 no_tariff                409
        ├── NoFreeUnitsDueError           no_free_units_due        409
        ├── RequestIdReusedError          request_id_reused        409
        ├── InProgressError               in_progress              409
        ├── UnknownReceiptError           unknown_receipt          404
        ├── ReversalWindowClosedError     reversal_window_closed   409
        ├── AlreadyAcceptedError          already_accepted         409
        ├── AlreadyReversedError          already_reversed         409
        ├── KeyUnavailableError           key_unavailable          409  (no vending key for it)
        ├── KeyChangeUnavailableError     key_change_unavailable   409
        ├── InvalidInputError             invalid_input            422
        ├── UnknownVendorError            unknown_vendor           404  (no enabled vendor)
        └── VendingUnavailableError       vending_unavailable      503
            └── VendingBusyError          vending_unavailable      503  (no connection in time)

Messages are meant for the vendor (and the customer at the till); they never carry key
material.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import GatewayError

__all__ = [
    "AlreadyAcceptedError",
    "AlreadyReversedError",
    "AmountTooLargeError",
    "AmountTooSmallError",
    "InProgressError",
    "InsufficientFloatError",
    "InvalidAmountError",
    "InvalidInputError",
    "KeyChangeUnavailableError",
    "KeyUnavailableError",
    "MeterBlockedError",
    "MeterNotConfiguredError",
    "NoFreeUnitsDueError",
    "NoTariffError",
    "NotPrepaidError",
    "RequestIdReusedError",
    "ReversalWindowClosedError",
    "UnknownMeterError",
    "UnknownReceiptError",
    "UnknownVendorError",
    "VendingBusyError",
    "VendingError",
    "VendingUnavailableError",
]


class VendingError(GatewayError):
    """A vending request refused: ``code`` is the contract's error code."""

    code: ClassVar[str] = "vending_error"
    status: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownMeterError(VendingError):
    code = "unknown_meter"
    status = 404


class NotPrepaidError(VendingError):
    code = "not_prepaid"
    status = 409


class MeterNotConfiguredError(VendingError):
    code = "meter_not_configured"
    status = 409


class MeterBlockedError(VendingError):
    code = "meter_blocked"
    status = 403


class AmountTooSmallError(VendingError):
    code = "amount_too_small"
    status = 422


class AmountTooLargeError(VendingError):
    code = "amount_too_large"
    status = 422


class InvalidAmountError(VendingError):
    code = "invalid_amount"
    status = 422


class InsufficientFloatError(VendingError):
    code = "insufficient_float"
    status = 402


class NoTariffError(VendingError):
    code = "no_tariff"
    status = 409


class NoFreeUnitsDueError(VendingError):
    code = "no_free_units_due"
    status = 409


class RequestIdReusedError(VendingError):
    code = "request_id_reused"
    status = 409


class InProgressError(VendingError):
    code = "in_progress"
    status = 409


class UnknownReceiptError(VendingError):
    code = "unknown_receipt"
    status = 404


class ReversalWindowClosedError(VendingError):
    code = "reversal_window_closed"
    status = 409


class AlreadyAcceptedError(VendingError):
    code = "already_accepted"
    status = 409


class AlreadyReversedError(VendingError):
    code = "already_reversed"
    status = 409


class KeyUnavailableError(VendingError):
    code = "key_unavailable"
    status = 409


class KeyChangeUnavailableError(VendingError):
    code = "key_change_unavailable"
    status = 409


class InvalidInputError(VendingError):
    code = "invalid_input"
    status = 422


class UnknownVendorError(VendingError):
    code = "unknown_vendor"
    status = 404


class VendingUnavailableError(VendingError):
    """The service cannot sell now. ``retry_after_s`` (the ``Retry-After`` header) when it is
    a passing state (busy, its database or key store away); None when only a change of the
    gateway's set-up helps."""

    code = "vending_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after_s: float | None = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class VendingBusyError(VendingUnavailableError):
    """No pooled database connection came free in time: nothing was done or decided."""
