"""Every setting is defined once, in the schema (type, default, bounds, doc): conf/base gives
only what the schema cannot (the locations the embedded profile reads and writes), and the
configuration reference is generated from the schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tests.conftest import REPO
from viva_pipelines.config import load_settings
from viva_pipelines.config.reference import configuration_reference, settings_of
from viva_pipelines.config.schema import Settings


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _conf_values(doc: dict, defaults: dict[str, Any], prefix: str = "") -> Iterator[tuple]:
    """(dotted key, value) of every setting a conf file gives."""
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if name in defaults:
            yield name, value
        else:
            assert isinstance(value, dict), f"{name}: in conf/base but not in the schema"
            yield from _conf_values(value, defaults, f"{name}.")


def _base_conf() -> dict[str, Any]:
    conf: dict[str, Any] = {}
    for file in sorted((REPO / "conf" / "base").glob("*.yaml")):
        conf.update(yaml.safe_load(file.read_text()))
    return conf


def test_conf_base_restates_no_default():
    """A value conf/base gives is either required by the schema or different from its default;
    restating a default would define the setting twice, and the two would drift apart."""
    defaults = {setting.key: setting.default for setting in settings_of(Settings)}
    restated = [
        f"{name}: {value!r} is the schema's default"
        for name, value in _conf_values(_base_conf(), defaults)
        if defaults[name] is not PydanticUndefined and _plain(defaults[name]) == _plain(value)
    ]
    assert restated == []


def test_conf_base_gives_every_required_setting():
    required = {s.key for s in settings_of(Settings) if s.default is PydanticUndefined}
    defaults = {setting.key: setting.default for setting in settings_of(Settings)}
    given = {name for name, _ in _conf_values(_base_conf(), defaults)}
    assert required and required <= given
    assert load_settings(REPO / "conf", include_local=False).env == "base"


def test_the_configuration_reference_is_generated_from_the_schema():
    """docs/configuration-reference.md is `viva config --reference`'s output for this schema:
    a changed setting changes the page, or this fails (regenerate it with that command)."""
    written = (REPO / "docs" / "configuration-reference.md").read_text()
    generated = configuration_reference(Settings)
    assert written == generated, (
        "regenerate: viva config --reference > docs/configuration-reference.md"
    )
    assert "| `sft.optim.lr` | float | `0.002` | > 0 |" in generated  # type, default, bound
