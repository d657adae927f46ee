"""What every mask backend returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from viva_pipelines.video.annotations import Annotations


@dataclass
class TrackedObject:
    """One object followed through a video.

    ``masks``: ``bool [T, H, W]`` aligned with the normalised frames of ``raw_videos``.
    ``score``: detector confidence (1.0 for annotations that came with the data).
    """

    object_id: int
    label: str
    masks: np.ndarray
    score: float = 1.0


class NoObjects(Exception):
    """A video the backend cannot find objects in (e.g. no annotations); the reason is kept."""


class MaskBackend(Protocol):
    """Finds and tracks the objects of one video."""

    name: str

    def track(
        self, frames: np.ndarray, annotations: Annotations | None, caption: str | None
    ) -> list[TrackedObject]:
        """``frames``: ``uint8 [T, H, W, 3]``; returns objects with ``bool [T, H, W]`` masks.
        Raises :class:`NoObjects` with the reason when it cannot look for any."""
        ...
