"""The configuration reference, generated from the schema: every key with its type, default,
bounds and one-line doc (``viva config --reference``; ``docs/configuration-reference.md`` is
this output, kept in sync by a test).

A key's doc is its field's ``description``, else the comment at the end of its line in the
class that declares it (or on a ``#:`` line right above it).
"""

from __future__ import annotations

import inspect
import io
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MultipleOf
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Generated from `viva_pipelines/config/schema.py` by `viva config --reference`; do not edit.
Every key of `conf/` with its type, default (the embedded profile's), bounds and meaning. How
the layers combine, and what production changes: [configuration.md](configuration.md).
"""

_BOUNDS = ((Ge, "≥", "ge"), (Gt, ">", "gt"), (Le, "≤", "le"), (Lt, "<", "lt"))


@cache
def _line_comments(model: type) -> dict[str, str]:
    """``{field: doc}`` of every class in ``model``'s MRO (a subclass's own doc wins): the
    comment at the end of a ``name: type = default  # doc`` line, or a ``#: doc`` line right
    above one whose own line has no room for it."""
    comments: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls is BaseModel or not issubclass(cls, BaseModel):
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        field_on_line: dict[int, str] = {}
        for number, line in enumerate(lines, 1):
            name = line.strip().split(":", 1)[0]
            if line.startswith("    ") and not line.startswith("     ") and name.isidentifier():
                field_on_line[number] = name
                above = lines[number - 2].strip() if number > 1 else ""
                if above.startswith("#:"):
                    comments[name] = above.removeprefix("#:").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT and token.start[0] in field_on_line:
                comments[field_on_line[token.start[0]]] = token.string.lstrip("# ").strip()
    return comments


def _section(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation: Any) -> str:
    """A readable type: ``int | None``, ``one of 'crop', 'pad'``, ``list[str]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, UnionType):
        return " \\| ".join(_type_name(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else _type_name(arg) for arg in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(annotation: Any, metadata: list[Any]) -> list[Any]:
    """The field's own constraints and those inside ``Annotated`` types of its annotation."""
    found = list(metadata)
    for arg in get_args(annotation):
        if get_origin(arg) is Annotated:
            found += [m for m in get_args(arg)[1:]]
            found += [c for m in get_args(arg)[1:] for c in getattr(m, "metadata", [])]
        elif get_args(arg):
            found += _constraints(arg, [])
    if get_origin(annotation) is Annotated:
        found += [c for m in get_args(annotation)[1:] for c in getattr(m, "metadata", [])]
    return found


def _bounds(constraints: list[Any]) -> str:
    found = []
    for item in constraints:
        for kind, symbol, attribute in _BOUNDS:
            if isinstance(item, kind):
                found.append(f"{symbol} {getattr(item, attribute)}")
        if isinstance(item, MultipleOf):
            found.append(f"multiple of {item.multiple_of}")
    return ", ".join(dict.fromkeys(found))


def _default(value: Any) -> str:
    if value is PydanticUndefined:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(section)"
    text = repr(value.model_dump() if isinstance(value, BaseModel) else value)
    return f"`{text}`".replace("|", "\\|")


@dataclass(frozen=True)
class Setting:
    """One leaf key of the configuration."""

    key: str  # dotted, e.g. sft.optim.lr
    section: type[BaseModel]  # the class that declares it
    name: str
    field: FieldInfo
    default: Any  # the effective default; PydanticUndefined when conf must give it


def settings_of(
    model: type[BaseModel], defaults: BaseModel | None = None, prefix: str = ""
) -> Iterator[Setting]:
    """Every leaf key below ``model``, a level's own keys before its sections' (flattened to
    dotted keys), each with its effective default: a section's default instance (e.g. the
    benchmark judge's ``max_new_tokens``) wins over its class's field defaults."""
    nested = []
    for name, field in model.model_fields.items():
        if defaults is not None:
            default = getattr(defaults, name)
        elif field.default is PydanticUndefined and field.default_factory is None:
            default = PydanticUndefined
        else:
            default = field.get_default(call_default_factory=True)
        section = _section(field.annotation)
        if section is not None:
            inner = default if isinstance(default, BaseModel) else None
            nested.append((section, inner, f"{prefix}{name}."))
        else:
            yield Setting(f"{prefix}{name}", model, name, field, default)
    for section, inner, path in nested:
        yield from settings_of(section, inner, path)


def _row(setting: Setting) -> list[str]:
    field = setting.field
    doc = field.description or _line_comments(setting.section).get(setting.name, "")
    return [
        f"`{setting.key}`",
        _type_name(field.annotation),
        _default(setting.default),
        _bounds(_constraints(field.annotation, field.metadata)),
        doc.replace("|", "\\|"),
    ]


def configuration_reference(settings: type[BaseModel]) -> str:
    """The Markdown reference of ``settings`` (the root schema): one table per top-level
    section, keys in declaration order, nested sections flattened to dotted keys."""
    parts = [HEADER]
    for name, field in settings.model_fields.items():
        section = _section(field.annotation)
        if section is None:
            continue
        doc = inspect.cleandoc(section.__dict__.get("__doc__") or "")
        default = field.get_default(call_default_factory=True)
        inner = default if isinstance(default, BaseModel) else None
        rows = [_row(setting) for setting in settings_of(section, inner, f"{name}.")]
        table = ["| key | type | default | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
        table += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append(f"## `{name}`\n\n" + (f"{doc}\n\n" if doc else "") + "\n".join(table) + "\n")
    return "\n".join(parts)
