"""The one JSON parser of the device protocol (docs/protocol.md §3, §5, §6).

Every JSON body from a device goes through :func:`load_json`: orjson, which is strict RFC 8259
(no ``NaN``/``Infinity``, valid UTF-8 only, no lone surrogates, numbers that overflow a double
refused). What the gateway then stores as JSON (event details, the status document) is also
passed through :func:`check_tree`, which refuses what PostgreSQL cannot store or what no meter
has a reason to send: ``\\u0000`` in any string or key, integers outside 64 bits, nesting deeper
than :data:`MAX_DEPTH`. Both raise ``PayloadError("bad_json", …)``.
"""

from __future__ import annotations

from typing import Final

import orjson

from protocols.errors import PayloadError

__all__ = ["MAX_DEPTH", "check_tree", "load_json"]

MAX_DEPTH: Final = 16
"""Deepest nesting accepted in a stored JSON document (the protocol itself needs 3)."""
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1


def load_json(payload: bytes) -> object:
    """Parse ``payload`` strictly; raise ``PayloadError("bad_json")`` for anything else."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError("bad_json", f"not strict JSON: {str(exc)[:120]}") from None


def check_tree(value: object, *, what: str = "document", max_depth: int = MAX_DEPTH) -> None:
    """Check that a parsed JSON value can be stored as-is (``jsonb``); raise otherwise."""
    # Iterative, so that the depth check itself cannot exhaust the Python stack.
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise PayloadError("bad_json", f"{what} contains a NUL character")
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            # orjson never yields a non-finite float
            continue
        elif isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                raise PayloadError("bad_json", f"{what} has an integer outside 64 bits")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise PayloadError("bad_json", f"{what} is nested deeper than {max_depth}")
            if isinstance(item, dict):
                for key, child in item.items():
                    if "\x00" in key:
                        raise PayloadError("bad_json", f"{what} contains a NUL character")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:  # pragma: no cover - orjson yields only the types above
            raise PayloadError("bad_json", f"{what} holds an unexpected {type(item).__name__}")
