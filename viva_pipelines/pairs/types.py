"""The edit-pair record and the editing-backend protocol shared by all generators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: Edit types, as named in the benchmark (VIE-Bench categories).
EDIT_TYPES = ("remove", "add", "color", "swap", "style", "tone", "hybrid", "ref_add", "ref_swap")
LOCAL_EDITS = ("remove", "add", "color", "swap", "ref_add", "ref_swap")
GLOBAL_EDITS = ("style", "tone")


@dataclass
class EditPair:
    """One training example. Frames are ``uint8 [T, H, W, 3]``; ``mask`` is the edit region,
    ``bool [T, H, W]`` (all True for global edits); ``reference`` an optional ``uint8 [h, w, 3]``
    image of the new object for ``ref_add`` / ``ref_swap``."""

    edit_type: str
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    instruction: str
    source_caption: str
    target_caption: str
    params: dict[str, Any] = field(default_factory=dict)
    reference: np.ndarray | None = None


class EditBackend(Protocol):
    """Pixel operations the generators need; implementations: OpenCV (CPU), diffusers (GPU)."""

    name: str

    def inpaint(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Fill ``masks`` (``bool [T, H, W]``) with plausible background; same shape as frames."""
        ...

    def render_object(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        prompt: str,
        reference: np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw the object described by ``prompt`` (and/or shown in ``reference``) inside
        ``masks``, leaving the rest of each frame untouched."""
        ...

    def restyle(self, frames: np.ndarray, prompt: str) -> np.ndarray:
        """A global edit of every frame described by ``prompt`` (a style, tone or weather)."""
        ...
