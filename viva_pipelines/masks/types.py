"""What every mask backend returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
