"""The pretrained models a training run names, checked from their configs before it starts.

A wrong ``models.*`` entry would otherwise surface minutes or hours in, after the instructor
has encoded the dataset or the DiT has been loaded: a folder that is not there, an image model
where the HunyuanVideo DiT belongs, a DiT whose channels cannot be widened for editing, a VAE
or an instructor whose widths do not fit the DiT. Only ``config.json`` files are read (from
the folder, or for a hub id from the local Hugging Face cache: nothing is downloaded), so the
check takes milliseconds; every problem is one line naming the key and what was found.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from viva_pipelines.config.schema import Settings
from viva_pipelines.model.channels import CONDITION_STREAMS, POSITION_CHANNELS
from viva_pipelines.model.sources import looks_local
from viva_pipelines.train.runs import codec_spec

TRANSFORMER_CLASS = "HunyuanVideoTransformer3DModel"
VAE_CLASS = "AutoencoderKLHunyuanVideo"
INSTRUCTOR_ARCHITECTURE = "LlavaForConditionalGeneration"


class ModelConfigError(ValueError):
    """A ``models.*`` entry that cannot serve; the message names every problem found."""


def read_config(model: str, subfolder: str | None = None) -> dict[str, Any] | None:
    """``config.json`` of ``model`` (a folder, or a hub id in the local cache) under
    ``subfolder``; None when there is none."""
    name = "/".join(part for part in (subfolder, "config.json") if part)
    path = Path(model).expanduser() / name
    if path.is_file():
        return json.loads(path.read_text())
    if looks_local(model) or Path(model).expanduser().exists():
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, name)
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def _missing(key: str, model: str, subfolder: str | None) -> str:
    where = f"{subfolder}/config.json" if subfolder else "config.json"
    return (
        f"{key}: {model!r} has no {where}: neither a saved checkpoint folder nor a hub id in "
        "the local Hugging Face cache (nothing is downloaded at run time)"
    )


def _transformer(settings: Settings, problems: list[str]) -> dict[str, Any] | None:
    model, subfolder = settings.models.transformer, settings.sft.model.transformer_subfolder
    config = read_config(model, subfolder)
    if config is None:
        problems.append(_missing("models.transformer", model, subfolder))
        return None
    found = config.get("_class_name")
    if found != TRANSFORMER_CLASS:
        problems.append(f"models.transformer: {model!r} is a {found}, not a {TRANSFORMER_CLASS}")
        return None
    inputs, outputs = config.get("in_channels"), config.get("out_channels")
    editing = CONDITION_STREAMS * outputs
    if inputs not in (outputs, editing, editing + POSITION_CHANNELS):
        problems.append(
            f"models.transformer: {model!r} reads {inputs} channels and predicts {outputs}: "
            f"neither a text-to-video DiT (equal, widened here to {CONDITION_STREAMS} x) nor "
            f"an editing one ({CONDITION_STREAMS} x {outputs} = {editing}, + {POSITION_CHANNELS} "
            "with position channels)"
        )
    return config


def _vae(settings: Settings, dit: dict[str, Any] | None, problems: list[str]) -> None:
    codec = codec_spec(settings)
    model = codec.get("model")
    if codec.get("kind") != "hunyuan_vae" or not model:
        return
    config = read_config(model, codec.get("subfolder"))
    if config is None:
        problems.append(_missing("models.vae", model, codec.get("subfolder")))
        return
    found = config.get("_class_name")
    if found != VAE_CLASS:
        problems.append(f"models.vae: {model!r} is a {found}, not a {VAE_CLASS}")
    elif dit is not None and config.get("latent_channels") != dit.get("out_channels"):
        problems.append(
            f"models.vae: {model!r} makes {config.get('latent_channels')} latent channels, the "
            f"DiT of models.transformer predicts {dit.get('out_channels')}"
        )


def _instructor(settings: Settings, dit: dict[str, Any] | None, problems: list[str]) -> None:
    model = settings.models.instructor
    config = read_config(model)
    if config is None:
        problems.append(_missing("models.instructor", model, None))
        return
    architectures = config.get("architectures") or []
    if INSTRUCTOR_ARCHITECTURE not in architectures:
        found = ", ".join(architectures) or "model of no declared architecture"
        problems.append(
            f"models.instructor: {model!r} is a {found}, not a {INSTRUCTOR_ARCHITECTURE}"
        )
        return
    width = (config.get("text_config") or {}).get("hidden_size")
    if dit is not None and width is not None and dit.get("text_embed_dim") != width:
        problems.append(
            f"models.instructor: {model!r} has {width}-wide hidden states, the DiT of "
            f"models.transformer reads {dit.get('text_embed_dim')}-wide tokens"
        )


def check_training_models(settings: Settings) -> None:
    """Raise :class:`ModelConfigError` listing every problem of the ``models.*`` entries the
    SFT reads (transformer, vae, instructor); null entries are the embedded stand-ins."""
    problems: list[str] = []
    dit = _transformer(settings, problems) if settings.models.transformer else None
    _vae(settings, dit, problems)
    if settings.models.instructor:
        _instructor(settings, dit, problems)
    if problems:
        raise ModelConfigError("\n".join(problems))
