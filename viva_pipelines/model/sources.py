"""Where pretrained weights come from: a local directory or a hub id, named the same way by
every component (instructor, codecs, CLIP and PickScore, the diffusers pair generators), and
the dtypes they load in.

Nothing is downloaded at run time; a hub id resolves through the local cache only (offline),
so a name that is clearly meant as a local path and is missing fails here, naming the path,
instead of as a hub lookup error.

Imports no model library (torch is imported by :func:`dtype_of`, whose callers hold it
already), so the training assets' checks of ``models.*`` use it while the definitions load.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: The weight dtypes conf may name (torch's names for them).
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype conf calls ``name``; an unknown name fails naming the known ones."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPE_NAMES)}")
    import torch

    return getattr(torch, name)


def looks_local(model: str) -> bool:
    """Whether ``model`` is clearly meant as a local path rather than a hub id ``owner/name``:
    absolute, explicitly relative (``.``, ``~``), more than one ``/`` or a backslash."""
    return (
        Path(model).expanduser().is_absolute()
        or model.startswith((".", "~"))
        or model.count("/") > 1
        or "\\" in model
    )


def local_model_dir(model: str, what: str, marker: str | None = "config.json") -> Path | None:
    """The local directory ``model`` names, or None for a hub id. An existing path must be a
    directory holding ``marker`` (a saved checkpoint's config; None: any directory); a path
    meant to be local (:func:`looks_local`) that is missing fails, naming it. ``what`` names
    the component in the messages ("instructor model", "CLIP model", ...)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{what} path is not a directory: {path}")
        if marker and not (path / marker).is_file():
            raise FileNotFoundError(
                f"{what} directory {path} has no {marker} (not a saved checkpoint)"
            )
        return path
    if looks_local(model):
        raise FileNotFoundError(f"{what} directory not found: {path}")
    return None
