"""Pure: one line per problem of a job config that pydantic refused, with a "did you mean" for a misspelt key."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import BaseModel
from pydantic_core import ErrorDetails

__all__ = ["config_problems"]


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names: itself, or the members of a union (``Annotated`` too)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models(argument)]


def _tag(model: type[BaseModel]) -> object:
    """A discriminated union member's tag: its ``kind`` field's default (``item_stats``, ``mf``...)."""
    field = model.model_fields.get("kind")
    return field.default if field is not None else None


def _keys_at(root: type[BaseModel], path: Sequence[int | str]) -> list[str]:
    """The keys a config section at ``path`` (pydantic's error location) accepts; [] when not a section."""
    current: Any = root
    for part in path:
        members = _models(current)
        holding = [m.model_fields[part] for m in members if isinstance(part, str) and part in m.model_fields]
        if holding:
            current = holding[0].annotation
            continue
        tagged = [m for m in members if _tag(m) == part]  # the union's tag in the location
        if not tagged:
            return []
        current = tagged[0]
    return sorted({name for model in _models(current) for name in model.model_fields})


def config_problems(root: type[BaseModel], errors: Sequence[ErrorDetails]) -> list[str]:
    """``dotted.location: message`` for each of ``errors`` (``ValidationError.errors()`` of ``root``).

    An unknown key (pydantic's ``extra_forbidden``) gets the closest keys its section accepts
    (``difflib``, at most 2), or the list of them when none is close.
    """
    problems = []
    for error in errors:
        location = [part for part in error["loc"]]
        line = f"{'.'.join(str(p) for p in location)}: {error['msg']}"
        if error["type"] == "extra_forbidden" and location:
            known = _keys_at(root, location[:-1])
            close = difflib.get_close_matches(str(location[-1]), known, n=2, cutoff=0.6)
            if close:
                line += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
            elif known:
                line += f" (this section takes: {', '.join(known)})"
        problems.append(line)
    return problems
