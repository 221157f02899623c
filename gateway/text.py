"""Text that PostgreSQL can store and a reply can carry.

PostgreSQL refuses NUL in ``text`` and ``jsonb``, and a lone surrogate (from JSON's
``"\\ud800"``, or a byte that was not UTF-8 decoded with ``surrogateescape``) cannot be encoded
as UTF-8 at all. Input from any edge (an HTTP body, a bulk file) is checked with
:func:`text_problem` before it travels to the database.
"""

from __future__ import annotations

__all__ = ["text_problem"]


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None when it can."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None
