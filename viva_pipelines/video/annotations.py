"""Sidecar annotations that travel with a video file.

A video ``clip.mp4`` may have two sidecars next to it:

- ``clip.json``: ``{"format": "viva-annotations/1", "caption": str,
  "objects": [{"id": 1, "label": "red circle", ...}, ...], ...}``; extra keys (for instance the
  demo world's scene description) are kept as they are;
- ``clip.masks.npz``: one array ``masks``, ``uint8 [T, H, W]``, an id map of the *visible*
  pixels of each object (0 = background, ``k`` = the object whose ``id`` is ``k``).

Alternatively, DAVIS-style: a folder ``clip.masks/`` of one index PNG per frame (palette or
greyscale; pixel value = object id, 0 and 255 = background/void), sorted by name, with
``clip.json`` optional for the caption and labels (``object k`` otherwise).

The functions here work on bytes so that the same code reads sidecars from a local folder and
from an object store.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMAT = "viva-annotations/1"
JSON_SUFFIX = ".json"
MASKS_SUFFIX = ".masks.npz"
PNG_DIR_SUFFIX = ".masks"
VOID = 255  # DAVIS marks unlabeled pixels with 255


class AnnotationError(ValueError):
    """A sidecar that cannot be read or does not match its video."""


@dataclass
class Annotations:
    """Caption, object list and per-frame visible-object id map of one video."""

    caption: str
    objects: list[dict[str, Any]]
    masks: np.ndarray  # uint8 [T, H, W], 0 = background, k = object id k
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks)
        if self.masks.ndim != 3 or self.masks.dtype != np.uint8:
            raise AnnotationError(
                f"masks must be uint8 [T, H, W], got {self.masks.dtype} {self.masks.shape}"
            )
        ids = [obj.get("id") for obj in self.objects]
        if any(not isinstance(i, int) or not 0 < i < 256 for i in ids) or len(set(ids)) != len(ids):
            raise AnnotationError(f"object ids must be distinct integers in 1..255, got {ids}")
        unknown = set(np.unique(self.masks).tolist()) - {0, *ids}
        if unknown:
            raise AnnotationError(f"masks contain ids {sorted(unknown)} with no object entry")

    def object_mask(self, object_id: int) -> np.ndarray:
        """Visible pixels of one object: ``bool [T, H, W]``."""
        return self.masks == object_id

    def to_bytes(self) -> tuple[bytes, bytes]:
        """``(json_bytes, npz_bytes)`` for the two sidecar files."""
        doc = {**self.extra, "format": FORMAT, "caption": self.caption, "objects": self.objects}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, masks=self.masks)
        return json.dumps(doc, indent=1, sort_keys=True).encode(), buffer.getvalue()

    @classmethod
    def from_bytes(cls, json_bytes: bytes, npz_bytes: bytes) -> Annotations:
        try:
            doc = json.loads(json_bytes)
            with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as npz:
                masks = npz["masks"]
        except (ValueError, KeyError, OSError) as exc:
            raise AnnotationError(f"unreadable sidecar: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise AnnotationError(f"sidecar JSON is not in the {FORMAT} format")
        extra = {k: v for k, v in doc.items() if k not in ("format", "caption", "objects")}
        return cls(str(doc.get("caption", "")), list(doc.get("objects", [])), masks, extra)


def sidecar_keys(video_key: str) -> tuple[str, str]:
    """Names of the JSON and mask sidecars of a video, e.g. ``a/clip.mp4`` → ``a/clip.json``."""
    stem = video_key.rsplit(".", 1)[0] if "." in video_key.rsplit("/", 1)[-1] else video_key
    return stem + JSON_SUFFIX, stem + MASKS_SUFFIX


def png_dir_key(video_key: str) -> str:
    """The DAVIS-style mask folder of a video, e.g. ``a/clip.mp4`` → ``a/clip.masks``."""
    return sidecar_keys(video_key)[1].removesuffix(".npz")


def masks_from_pngs(pngs: list[bytes]) -> np.ndarray:
    """``uint8 [T, H, W]`` id map from one index PNG per frame (void 255 becomes 0)."""
    if not pngs:
        raise AnnotationError("mask folder holds no PNG frames")
    frames = []
    for index, data in enumerate(pngs):
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise AnnotationError(f"mask frame {index}: unreadable PNG ({exc})") from None
        if image.mode not in ("P", "L", "1"):
            raise AnnotationError(
                f"mask frame {index}: mode {image.mode} is not an index image (palette or grey)"
            )
        frames.append(np.asarray(image).astype(np.uint8))
    if len({frame.shape for frame in frames}) != 1:
        raise AnnotationError("mask frames differ in size")
    masks = np.stack(frames)
    masks[masks == VOID] = 0
    return masks


def annotations_from_pngs(pngs: list[bytes], json_bytes: bytes | None = None) -> Annotations:
    """Annotations from a DAVIS-style mask folder and an optional JSON sidecar."""
    masks = masks_from_pngs(pngs)
    try:
        doc = json.loads(json_bytes) if json_bytes else {}
    except ValueError as exc:
        raise AnnotationError(f"unreadable sidecar JSON: {exc}") from None
    described = {int(obj["id"]): obj for obj in doc.get("objects", []) if "id" in obj}
    ids = sorted(set(np.unique(masks).tolist()) - {0} | set(described))
    objects = [described.get(i, {"id": i, "label": f"object {i}"}) for i in ids]
    extra = {k: v for k, v in doc.items() if k not in ("format", "caption", "objects")}
    return Annotations(str(doc.get("caption", "")), objects, masks, extra)
