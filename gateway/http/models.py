"""Base of the API's request bodies: text that PostgreSQL and JSON replies can carry.

JSON lets a client send ``"\\u0000"`` and lone surrogates (``"\\ud800"``). PostgreSQL refuses NUL
in ``text`` and ``jsonb``, and a lone surrogate cannot be encoded as UTF-8 at all, so either one
used to travel to the database (or into an error reply) and come back as a 500. Request models
derive from :class:`ApiModel`, which refuses such text (:func:`gateway.text.text_problem`)
anywhere in a field's value, keys of nested objects included, with a 422 naming the field.
(Unknown fields are ignored, never stored.)
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, field_validator

from gateway.text import text_problem

__all__ = ["ApiModel", "StorableText", "text_problem"]

_MAX_DEPTH: Final = 64


def _storable(value: str) -> str:
    if (problem := text_problem(value)) is not None:
        raise ValueError(problem)
    return value


StorableText = Annotated[str, AfterValidator(_storable)]
"""Free text from a query string or path that reaches the database: NUL or lone surrogates → 422."""


def _check(value: Any, where: str, depth: int) -> None:
    """Raise ValueError for unstorable text in ``value`` (``where``: the path inside it)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"nested too deeply at {where}")
    if isinstance(value, str):
        if (problem := text_problem(value)) is not None:
            raise ValueError(f"{where} {problem}" if where else problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            if (problem := text_problem(str(key))) is not None:
                raise ValueError(f"a key {f'in {where} ' if where else ''}{problem}")
            _check(item, f"{where}.{key}".lstrip(".")[:80], depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]", depth + 1)


class ApiModel(BaseModel):
    """A request body whose text, wherever it is, can be stored and echoed."""

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        _check(value, "", 0)
        return value
