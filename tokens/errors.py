"""Errors raised by the STS token engine (``tokens/``).

Every error carries a short machine-readable ``code`` (written by ``sts-token batch`` as
``{"error": {"code": …, "message": …}}`` and used by the meter decoder model as its rejection
reason) and a human message. Messages never contain key material: vending keys and decoder keys
are secrets, so an error names the parameter that was wrong, never its value.

The subtree, under the project root :class:`protocols.errors.MeteringError`::

    MeteringError
    └── TokenError                      code "token_error"
        ├── TokenInputError             a token number typed or received is not acceptable
        │   ├── InvalidTokenError       "invalid_token": not 20 digits, or a value >= 2**66
        │   ├── CrcError                "crc_mismatch": CRC fails after decryption, i.e. the
        │   │                           decoder key is wrong or digits were mistyped
        │   └── UnsupportedTokenError   "unsupported_token": class/subclass not implemented
        │                               (currency credit 4-7, reserved subclasses, class 3)
        ├── ValueOutOfRangeError        "value_out_of_range": a field cannot be encoded
        │   └── TidOutOfRangeError      "tid_out_of_range": issue time outside the 24-bit TID
        │                               range of its base date
        ├── InvalidMeterNumberError     "invalid_meter_number": PAN / DRN malformed or failing
        │                               its Luhn check digit
        ├── KeyParameterError           "invalid_key_parameter": bad KT, KRN, TI, SGC, base
        │                               date, EA, DKGA, key length or missing decoder key
        └── BadRequestError             "bad_request": a batch request line that is not valid
                                        JSON or does not follow the documented shape

"The peer sent garbage" is :class:`TokenInputError` (and :class:`BadRequestError` for batch
lines); the other branches say a value given to an encoder can never be encoded.
"""

from __future__ import annotations

from protocols.errors import MeteringError

__all__ = [
    "BadRequestError",
    "CrcError",
    "InvalidMeterNumberError",
    "InvalidTokenError",
    "KeyParameterError",
    "TidOutOfRangeError",
    "TokenError",
    "TokenInputError",
    "UnsupportedTokenError",
    "ValueOutOfRangeError",
]


class TokenError(MeteringError):
    """Root of the token engine's errors; ``code`` is a short machine-readable reason."""

    code: str = "token_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The human-readable message (never contains key material)."""
        return str(self.args[0]) if self.args else ""


class TokenInputError(TokenError):
    """A 20-digit token number that cannot be accepted."""

    code = "invalid_token"


class InvalidTokenError(TokenInputError):
    """The text is not a 20-digit number, or its value is 2**66 or more (IEC 62055-41 §6.3)."""

    code = "invalid_token"


class CrcError(TokenInputError):
    """The CRC of the decrypted data block does not match.

    With a 66-bit token a wrong decoder key and a mistyped digit are indistinguishable: both
    yield a data block whose CRC-16 fails.
    """

    code = "crc_mismatch"


class UnsupportedTokenError(TokenInputError):
    """A well-formed token of a class/subclass this engine does not implement."""

    code = "unsupported_token"


class ValueOutOfRangeError(TokenError):
    """A field value (amount, watts, TID, RND, register, control ...) outside its bit width."""

    code = "value_out_of_range"


class TidOutOfRangeError(ValueOutOfRangeError):
    """An issue time before the base date, or 2**24 minutes or more after it."""

    code = "tid_out_of_range"


class InvalidMeterNumberError(TokenError):
    """A meter PAN or DRN that is malformed or fails its Luhn check digit."""

    code = "invalid_meter_number"


class KeyParameterError(TokenError):
    """Bad key parameters: KT, KRN, TI, SGC, KEN, RO, base date, EA, DKGA or key length."""

    code = "invalid_key_parameter"


class BadRequestError(TokenError):
    """A batch request that is not valid JSON or not of the documented shape."""

    code = "bad_request"
