"""Guided decoding of a flat JSON object: the keys and punctuation are written in the schema's
order and the model supplies each value, so any model (a random-weight rehearsal one
included) answers in the schema, as vLLM's guided decoding does for a served model.

Supported values: ``boolean``, ``enum``, ``integer`` with ``minimum`` and ``maximum`` (at most
:data:`MAX_CHOICES` of them) — the model's most likely option — and ``string`` — free text up
to the closing quote.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

MAX_CHOICES = 101


def value_options(name: str, spec: dict[str, Any]) -> list[Any] | None:
    """The values ``spec`` allows when they can be listed, ``None`` for free text. Raises
    ``ValueError`` naming the property for what guided decoding cannot produce."""
    if "enum" in spec:
        return list(spec["enum"])
    kind = spec.get("type")
    if kind == "boolean":
        return [True, False]
    if kind == "integer":
        low, high = spec.get("minimum"), spec.get("maximum")
        if low is None or high is None or not 0 < high - low + 1 <= MAX_CHOICES:
            raise ValueError(f"{name}: an integer needs minimum and maximum, at most {MAX_CHOICES}")
        return list(range(low, high + 1))
    if kind == "string":
        return None
    raise ValueError(f"{name}: guided decoding has no rule for {spec!r}")


def fill_object(
    schema: dict[str, Any],
    choose: Callable[[str, Sequence[str]], int],
    write: Callable[[str, int], str],
) -> str:
    """The JSON text of an object following ``schema`` (``type: object`` with ``properties``).

    ``choose(prefix, options)``: the index of the option (JSON text) the model finds most
    likely after ``prefix``, the answer so far. ``write(prefix, min_length)``: the text the
    model writes after ``prefix`` (which ends in an opening quote) up to its closing quote, at
    least ``min_length`` characters long.
    """
    if schema.get("type") != "object" or not schema.get("properties"):
        raise ValueError("guided decoding needs an object schema with properties")
    text = "{"
    for position, (name, spec) in enumerate(schema["properties"].items()):
        text += (", " if position else "") + json.dumps(name) + ": "
        options = value_options(name, spec)
        if options is None:
            value = write(text + '"', int(spec.get("minLength", 0)))
        else:
            value = options[choose(text, [json.dumps(option) for option in options])]
        text += json.dumps(value, ensure_ascii=False)
    return text + "}"
