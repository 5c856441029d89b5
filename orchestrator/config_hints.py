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


def _walk(root: type[BaseModel], path: Sequence[int | str]) -> tuple[list[str], list[str]]:
    """The keys the config section at ``path`` (pydantic's error location) accepts ([] when not a section),
    and ``path`` as the YAML spells it: without a discriminated union's tag (``training.model``, not
    ``training.model.item_stats``)."""
    current: Any = root
    shown: list[str] = []
    for position, part in enumerate(path):
        members = _models(current)
        holding = [m.model_fields[part] for m in members if isinstance(part, str) and part in m.model_fields]
        if holding:
            current = holding[0].annotation
            shown.append(str(part))
            continue
        tagged = [m for m in members if _tag(m) == part]  # the union's tag in the location
        if not tagged:
            return [], shown + [str(p) for p in path[position:]]
        current = tagged[0]
    return sorted({name for model in _models(current) for name in model.model_fields}), shown


def _kinds(root: type[BaseModel], path: Sequence[int | str]) -> list[str]:
    """The tags (``kind`` values) of the discriminated union at ``path``, if it is one."""
    current: Any = root
    for part in path:
        holding = [m.model_fields[part] for m in _models(current) if isinstance(part, str) and part in m.model_fields]
        if not holding:
            return []
        current = holding[0].annotation
    return [str(tag) for model in _models(current) if (tag := _tag(model)) is not None]


def _homes(root: Any, key: str, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every section (dotted, as the YAML spells it) under ``root`` (a model or a union of them) that takes ``key``."""
    found: list[str] = []
    for model in _models(root):
        if key in model.model_fields:
            found.append(".".join(prefix) or "the top level")
        for name, field in model.model_fields.items():
            if _models(field.annotation):
                found += _homes(field.annotation, key, (*prefix, name))
    return sorted(set(found))


def config_problems(root: type[BaseModel], errors: Sequence[ErrorDetails]) -> list[str]:
    """``dotted.location: message`` for each of ``errors`` (``ValidationError.errors()`` of ``root``).

    Locations are written as in the YAML (a model's ``kind`` is not a level). An unknown key
    (pydantic's ``extra_forbidden``) gets the sections that take that key, else the closest keys its
    section accepts (``difflib``, at most 2), else the list of them; a section without its ``kind``
    gets the kinds.
    """
    problems = []
    for error in errors:
        location = list(error["loc"])
        known, shown = _walk(root, location[:-1]) if location else ([], [])
        where = ".".join([*shown, str(location[-1])] if location else shown)
        line = f"{where}: {error['msg']}"
        if error["type"] == "extra_forbidden" and location:
            close = difflib.get_close_matches(str(location[-1]), known, n=2, cutoff=0.6)
            homes = [h for h in _homes(root, str(location[-1])) if h != ".".join(shown)]
            if homes:  # the key exists, in another section
                line += f" (it belongs under {' or '.join(f'`{h}`' for h in homes)})"
            elif close:
                line += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
            elif known:
                line += f" (this section takes: {', '.join(known)})"
        elif error["type"] == "union_tag_not_found" and (kinds := _kinds(root, location)):
            line = f"{where}: no `kind`; give `kind:` one of {', '.join(repr(k) for k in kinds)}"
        problems.append(line)
    return problems
