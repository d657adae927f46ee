"""conf/base and the schema say the same thing: every value conf/base gives is the schema's
default for that key (the schema is where a setting's type, default and doc live; conf/base
spells the embedded profile out for people to read and edit)."""

from __future__ import annotations

from typing import Any, get_args

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tests.conftest import REPO
from viva_pipelines.config.reference import configuration_reference
from viva_pipelines.config.schema import Settings

#: Keys conf/base sets to the demo's own files where the schema has no default location.
DEMO_LOCATIONS = {"benchmark.manifest", "inference.requests"}


def _section(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _disagreements(model: type[BaseModel], conf: dict, defaults: Any, path: str) -> list[str]:
    found = []
    for key, value in conf.items():
        name = f"{path}{key}"
        field = model.model_fields.get(key)
        assert field is not None, f"{name}: in conf/base but not in the schema"
        if field.default is PydanticUndefined and field.default_factory is None:
            default = PydanticUndefined  # required: conf/base must give it
        else:
            default = field.get_default(call_default_factory=True)
        if defaults is not None and default is not PydanticUndefined:
            default = getattr(defaults, key)  # a section's own default instance wins
        section = _section(field.annotation)
        if section is not None and isinstance(value, dict):
            inner = default if isinstance(default, BaseModel) else None
            found += _disagreements(section, value, inner, f"{name}.")
        elif (
            default is not PydanticUndefined
            and name not in DEMO_LOCATIONS
            and _plain(default) != _plain(value)
        ):
            found.append(f"{name}: conf/base {value!r}, schema {default!r}")
    return found


def test_conf_base_gives_the_schema_defaults():
    conf: dict[str, Any] = {}
    for file in sorted((REPO / "conf" / "base").glob("*.yaml")):
        conf.update(yaml.safe_load(file.read_text()))
    assert _disagreements(Settings, conf, None, "") == []


def test_the_configuration_reference_is_generated_from_the_schema():
    """docs/configuration-reference.md is `viva config --reference`'s output for this schema:
    a changed setting changes the page, or this fails (regenerate it with that command)."""
    written = (REPO / "docs" / "configuration-reference.md").read_text()
    generated = configuration_reference(Settings, REPO / "conf" / "base")
    assert written == generated, (
        "regenerate: viva config --reference > docs/configuration-reference.md"
    )
    assert "| `sft.optim.lr` | float | `0.002` | > 0 |" in generated  # type, default, bound
