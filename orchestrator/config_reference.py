"""The configuration reference (docs/configuration.md), generated from the job config models.

Regenerate after changing any config model:

    python -m expunge.orchestrator.config_reference          # writes docs/configuration.md
    python -m expunge.orchestrator.config_reference --check  # exit 1 when the file is stale

``tests/orchestrator/test_config_reference.py`` fails when the file and the models disagree,
and when a field has no ``Field(description=...)``.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from expunge.orchestrator.config import JobConfig

__all__ = ["REFERENCE_PATH", "main", "missing_descriptions", "reference_markdown"]

REFERENCE_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

_HEADER = """\
# Configuration reference

<!-- Generated from the pydantic models by `python -m expunge.orchestrator.config_reference`; do not edit by hand.
     tests/orchestrator/test_config_reference.py fails when this file and the models disagree. -->

A job config is one YAML file (see `infra/configs/` for examples) loaded by
`expunge.orchestrator.config.load_job_config`: unknown keys are refused (with the section a key
belongs in, or the closest key its section takes, e.g. `service.registraton_nice_increment: ...
(did you mean 'registration_nice_increment'?)`), a key given twice in one section is refused
(with both lines), every problem is listed at once, and keys left out take the defaults below.
Keys are written here as dotted paths:
`sharding.shards: 8` is

```yaml
sharding:
  shards: 8
```
"""


def _section(path: str) -> str:
    return path or "(top level)"


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _union_members(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return None


def _type_name(annotation: Any) -> str:
    """A short, Markdown-safe name of a field's type."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    members = _union_members(annotation)
    if members is not None:
        return " or ".join(_type_name(m) for m in members)
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " or ".join(f"`{json.dumps(v)}`" for v in typing.get_args(annotation))
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"mapping of {_type_name(key)} to {_type_name(value)}"
    if origin in (tuple, list):
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: FieldInfo) -> list[str]:
    found: list[str] = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            found.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            found.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            found.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            found.append(f"< {item.lt}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            found.append(f"matches `{pattern}`")
    return found


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(to_jsonable_python(value))}`"


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The config models a field holds: one, several (a union chosen by ``kind``), or none."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _models(typing.get_args(annotation)[0])
    members = _union_members(annotation)
    candidates = members if members is not None else (annotation,)
    return [m for m in candidates if isinstance(m, type) and issubclass(m, BaseModel)]


def _sections(model: type[BaseModel], path: str, title: str) -> Iterator[tuple[str, type[BaseModel], str]]:
    """``(title, model, path)`` of the model and, depth first, every model nested in it."""
    yield title, model, path
    for name, field in model.model_fields.items():
        nested = _models(field.annotation)
        dotted = f"{path}.{name}" if path else name
        for sub in nested:
            if len(nested) > 1:
                kind = sub.model_fields["kind"].default
                yield from _sections(sub, dotted, f"`{dotted}` with `kind: {kind}`")
            else:
                yield from _sections(sub, dotted, f"`{dotted}`")


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def reference_markdown() -> str:
    """The whole of docs/configuration.md."""
    parts = [_HEADER]
    for title, model, path in _sections(JobConfig, "", "Top level"):
        doc = _escape((model.__doc__ or "").strip().split("\n\n")[0])
        parts.append(f"\n## {title}\n\n{model.__name__}: {doc}\n")
        parts.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        for name, field in model.model_fields.items():
            dotted = f"{path}.{name}" if path else name
            nested = _models(field.annotation)
            kind = _type_name(field.annotation)
            meaning = _escape(field.description or "")
            if nested:
                kind = "section" if len(nested) == 1 else "one of " + ", ".join(f"`{m.__name__}`" for m in nested)
                links = [t for t, _, p in _sections(model, path, "") if p == dotted]
                meaning += " See " + ", ".join(f"[{t}](#{_anchor(t)})" for t in links) + "."
            kind = ", ".join([kind, *_constraints(field)])
            parts.append(f"| `{dotted}` | {_escape(kind)} | {_default(field)} | {meaning} |")
    return "\n".join(parts) + "\n"


def missing_descriptions() -> list[str]:
    """Dotted paths of fields without ``Field(description=...)`` (the reference needs a meaning for each)."""
    missing = []
    for _, model, path in _sections(JobConfig, "", ""):
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{path}.{name}" if path else name)
    return missing


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    text = reference_markdown()
    if check:
        current = REFERENCE_PATH.read_text() if REFERENCE_PATH.is_file() else ""
        if current != text:
            print(f"{REFERENCE_PATH} is stale: run `python -m expunge.orchestrator.config_reference`", file=sys.stderr)
            return 1
        return 0
    REFERENCE_PATH.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE_PATH.write_text(text)
    print(f"wrote {REFERENCE_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
