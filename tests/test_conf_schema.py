"""conf/base and the schema say the same thing: every value conf/base gives is the schema's
default for that key (the schema is where a setting's type, default and doc live; conf/base
spells the embedded profile out for people to read and edit)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tests.conftest import REPO
from viva_pipelines.config.reference import configuration_reference, settings_of
from viva_pipelines.config.schema import Settings

#: Keys conf/base sets to the demo's own files where the schema has no default location.
DEMO_LOCATIONS = {"benchmark.manifest", "inference.requests"}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _conf_values(doc: dict, defaults: dict[str, Any], prefix: str = "") -> Iterator[tuple]:
    """(dotted key, value) of every setting conf/base gives."""
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if name in defaults:
            yield name, value
        else:
            assert isinstance(value, dict), f"{name}: in conf/base but not in the schema"
            yield from _conf_values(value, defaults, f"{name}.")


def _disagreements(conf: dict) -> list[str]:
    defaults = {setting.key: setting.default for setting in settings_of(Settings)}
    return [
        f"{name}: conf/base {value!r}, schema {defaults[name]!r}"
        for name, value in _conf_values(conf, defaults)
        if defaults[name] is not PydanticUndefined  # required: conf/base must give it
        and name not in DEMO_LOCATIONS
        and _plain(defaults[name]) != _plain(value)
    ]


def test_conf_base_gives_the_schema_defaults():
    conf: dict[str, Any] = {}
    for file in sorted((REPO / "conf" / "base").glob("*.yaml")):
        conf.update(yaml.safe_load(file.read_text()))
    assert _disagreements(conf) == []


def test_the_configuration_reference_is_generated_from_the_schema():
    """docs/configuration-reference.md is `viva config --reference`'s output for this schema:
    a changed setting changes the page, or this fails (regenerate it with that command)."""
    written = (REPO / "docs" / "configuration-reference.md").read_text()
    generated = configuration_reference(Settings, REPO / "conf" / "base")
    assert written == generated, (
        "regenerate: viva config --reference > docs/configuration-reference.md"
    )
    assert "| `sft.optim.lr` | float | `0.002` | > 0 |" in generated  # type, default, bound
