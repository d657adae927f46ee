"""Read ``conf/`` layers, merge them key by key, validate, and explain failures precisely.

Layers, later wins: ``conf/base/*.yaml`` → ``conf/<env>/*.yaml`` → ``conf/local/*.yaml`` →
explicit overrides. A profile may build on another: ``extends: prod`` at the top of one of
``conf/<env>``'s files puts ``conf/prod`` between base and it (``conf/rehearsal`` does). Every
leaf remembers the file it came from, so a validation error names the file and the dotted key
to fix. Values may use OmegaConf interpolation, e.g.
``${oc.env:VIVA_BUCKET,viva-demo}``: that is how deployments inject values without editing
files (secrets are never put in conf at all; clients read them from their own env vars).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from viva_pipelines.config.schema import Settings
from viva_pipelines.yaml_loading import load_yaml

BASE_ENV = "base"
LOCAL_ENV = "local"
OVERRIDES = "<overrides>"
#: The top-level key of a profile file naming the profile it builds on (not a setting).
EXTENDS = "extends"


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names the file and key of each problem."""


def load_settings(
    conf_dir: str | Path,
    env: str | None = None,
    *,
    include_local: bool = True,
    overrides: Mapping[str, Any] | None = None,
    overrides_origin: str = OVERRIDES,
) -> Settings:
    """Merge and validate the configuration layers under ``conf_dir``.

    ``env`` names an overlay directory (``prod``…); ``None`` or ``"base"`` uses base alone.
    Relative local paths are resolved against ``conf_dir``'s parent (the project directory).
    ``overrides``: dotted keys set over every layer, validated with them; an error in one names
    ``overrides_origin`` as where it was set (a command's flags, say).
    """
    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / BASE_ENV).is_dir():
        raise ConfigError(f"{conf_dir}: no '{BASE_ENV}' directory; is this a conf/ folder?")
    project_dir = conf_dir.parent
    layers = [conf_dir / BASE_ENV]
    if env and env != BASE_ENV:
        layers += _profile_layers(conf_dir, env, project_dir)
    if include_local and env != LOCAL_ENV and (conf_dir / LOCAL_ENV).is_dir():
        layers.append(conf_dir / LOCAL_ENV)

    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for layer in layers:
        layer_keys: dict[tuple[str, ...], str] = {}
        for file in sorted([*layer.glob("*.yaml"), *layer.glob("*.yml")]):
            name = _display(file, project_dir)
            doc = _read_yaml(file, name)
            doc.pop(EXTENDS, None)  # read by _profile_layers
            for key in _leaf_keys(doc):
                if key in layer_keys:
                    raise ConfigError(
                        f"{name}: {'.'.join(key)}: also set in {layer_keys[key]} "
                        "of the same layer; set it in one file"
                    )
                layer_keys[key] = name
            _merge_into(merged, doc, origin, name, ())
    if overrides:
        _merge_into(merged, _expand_dotted(overrides), origin, overrides_origin, ())
    merged["env"] = env or BASE_ENV

    searched = _searched(layers, project_dir)
    resolved = _resolve_interpolations(merged, origin, searched)
    try:
        return Settings.model_validate(resolved, context={"base_dir": project_dir})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origin, layers, project_dir)) from None
    except (RuntimeError, TypeError, ValueError, OSError) as exc:
        # A validator that failed with something other than a ValueError (for example
        # Path.expanduser on "~nobody/x" raises RuntimeError): no key is known, so name
        # every layer and quote the problem instead of letting the traceback escape.
        raise ConfigError(
            f"invalid configuration in {searched}: {type(exc).__name__}: {exc}"
        ) from None


def _searched(layers: list[Path], project_dir: Path) -> str:
    return ", ".join(_display(layer, project_dir) + "/" for layer in layers)


def _display(path: Path, project_dir: Path) -> str:
    try:
        return str(path.relative_to(project_dir))
    except ValueError:
        return str(path)


def _profile_layers(conf_dir: Path, env: str, project_dir: Path) -> list[Path]:
    """The layer directories of profile ``env``: those of the profiles it extends, then its own."""
    chain: list[Path] = []
    while env != BASE_ENV:
        layer = conf_dir / env
        if not layer.is_dir():
            available = sorted(p.name for p in conf_dir.iterdir() if p.is_dir())
            raise ConfigError(
                f"environment '{env}' has no directory {layer}; available: {', '.join(available)}"
            )
        if layer in chain:
            names = " -> ".join(p.name for p in [*chain, layer])
            raise ConfigError(
                f"{_display(layer, project_dir)}: profiles extend in a cycle: {names}"
            )
        chain.append(layer)
        parents = {
            _display(file, project_dir): doc[EXTENDS]
            for file in sorted([*layer.glob("*.yaml"), *layer.glob("*.yml")])
            if EXTENDS in (doc := _read_yaml(file, _display(file, project_dir)))
        }
        if len(parents) > 1:
            raise ConfigError(f"{EXTENDS}: set in {', '.join(parents)}; set it in one file")
        if not parents:
            break
        ((name, env),) = parents.items()
        if not isinstance(env, str) or not env or "/" in env or env.startswith("."):
            raise ConfigError(f"{name}: {EXTENDS} must name a profile under conf/, got {env!r}")
    return chain[::-1]


def _read_yaml(file: Path, name: str) -> dict[str, Any]:
    try:
        doc = load_yaml(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read ({exc.strerror or exc})") from None
    except RecursionError:
        raise ConfigError(f"{name}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{name}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{name}: top level must be a mapping of sections, got {type(doc).__name__}"
        )
    return doc


def _leaf_keys(doc: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterable[tuple[str, ...]]:
    for key, value in doc.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            yield from _leaf_keys(value, path)
        else:
            yield path


def _merge_into(
    target: dict[str, Any],
    doc: Mapping[str, Any],
    origin: dict[tuple[str, ...], str],
    name: str,
    prefix: tuple[str, ...],
) -> None:
    """Deep-merge ``doc`` into ``target``; mappings merge key by key, anything else replaces."""
    for key, value in doc.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            origin.setdefault(path, name)
            _merge_into(target[key], value, origin, name, path)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value
            for stale in [k for k in origin if k[: len(path)] == path]:
                del origin[stale]
            origin[path] = name
            if isinstance(value, Mapping):
                for leaf in _leaf_keys(value, path):
                    origin[leaf] = name


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"ingest.shard_size": 4}`` → ``{"ingest": {"shard_size": 4}}``."""
    expanded: dict[str, Any] = {}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = expanded
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return expanded


def _resolve_interpolations(
    merged: dict[str, Any], origin: dict[tuple[str, ...], str], searched: str
) -> Any:
    _check_types(merged, origin, searched, ())
    try:
        return OmegaConf.to_container(OmegaConf.create(merged), resolve=True)
    except RecursionError:
        # a YAML alias that contains itself (``a: &x [*x]``) or absurdly deep nesting
        raise ConfigError(
            f"{searched}: a value nests too deeply (a recursive YAML alias?)"
        ) from None
    except OmegaConfBaseException as exc:
        # OmegaConf writes list items as ``a.b[0].c``: key origins are recorded per mapping key
        full_key = str(getattr(exc, "full_key", "") or "")
        key = tuple(part for part in re.split(r"\.|\[\d+\]", full_key) if part)
        where = _origin_of(key, origin) or searched
        raise ConfigError(f"{where}: {full_key or '<root>'}: {exc.msg}") from None


#: What a YAML value may be (OmegaConf's primitives); dates, sets etc. are not.
_SCALARS = (str, int, float, bool, bytes, type(None))
_MAX_DEPTH = 64


def _check_types(
    node: Any,
    origin: Mapping[tuple[str, ...], str],
    searched: str,
    path: tuple[str, ...],
    depth: int = 0,
) -> None:
    """Refuse values OmegaConf cannot hold, naming their exact file and key (OmegaConf's own
    message cannot locate a key that contains a dot)."""
    if depth > _MAX_DEPTH:  # also catches an alias that contains itself (a: &x [*x])
        where = _origin_of(path, origin) or searched
        raise ConfigError(f"{where}: {'.'.join(path[:8]) or '<root>'}: nested too deeply")
    if isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str | int | float | bool):
                where = _origin_of(path, origin) or searched
                raise ConfigError(
                    f"{where}: {'.'.join(path) or '<root>'}: key {key!r} must be text"
                )
            _check_types(value, origin, searched, (*path, str(key)), depth + 1)
    elif isinstance(node, list):
        for item in node:
            _check_types(item, origin, searched, path, depth + 1)
    elif not isinstance(node, _SCALARS):
        where = _origin_of(path, origin) or searched
        raise ConfigError(
            f"{where}: {'.'.join(path)}: a {type(node).__name__} value is not supported here"
            " (quote it to make it text)"
        )


def _origin_of(loc: tuple[str, ...], origin: Mapping[tuple[str, ...], str]) -> str | None:
    """The file that set ``loc`` or, failing that, its nearest configured parent."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in origin:
            return origin[loc[:end]]
    return None


def _explain(
    exc: ValidationError,
    origin: Mapping[tuple[str, ...], str],
    layers: list[Path],
    project_dir: Path,
) -> str:
    searched = _searched(layers, project_dir)
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "<root>"
        file = _origin_of(loc, origin)
        if error["type"] == "missing":
            where = f"{file}" if file else f"none of {searched}"
            lines.append(f"{where}: {key}: required value is missing")
        elif error["type"] == "extra_forbidden":
            lines.append(f"{file}: {key}: unknown key")
        else:
            got = error.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            where = f"{file or searched}: {key}" if loc else f"{searched}"
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
