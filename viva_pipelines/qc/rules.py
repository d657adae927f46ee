"""Rule metrics of an edit pair and the thresholds that reject bad ones.

The metrics are computed where a pair is made (``synthetic_pairs``, per shard, frames already in
memory) and stored in its manifest; ``qc_dataset`` then applies the thresholds from conf to
manifests alone, so changing a threshold never re-reads a video.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from viva_pipelines.config.schema import QcThresholdsSettings
from viva_pipelines.masks.tracks import track_stats
from viva_pipelines.pairs.types import GLOBAL_EDITS


def dilate(masks: np.ndarray, pixels: int) -> np.ndarray:
    """Grow ``bool [T, H, W]`` masks by ``pixels`` in every direction (square structuring)."""
    if pixels <= 0:
        return masks.astype(bool)
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])


def pair_metrics(
    source: np.ndarray, target: np.ndarray, mask: np.ndarray, *, dilation: int = 4
) -> dict[str, Any]:
    """Rule metrics of a pair (frames ``uint8 [T, H, W, 3]``, mask ``bool [T, H, W]``).

    Changes are mean absolute differences in grey levels (0-255) over all channels:
    ``outside_change`` over pixels outside the dilated mask (≈ codec noise for a clean local
    edit), ``inside_change`` over the mask, ``total_change`` over everything.
    """
    frames = min(len(source), len(target), len(mask))
    src = source[:frames].astype(np.int16)
    diff = np.abs(src - target[:frames].astype(np.int16)).mean(axis=-1)  # [T, H, W]
    mask = mask[:frames].astype(bool)
    outside = ~dilate(mask, dilation)
    stats = track_stats(mask)
    return {
        "frames_source": len(source),
        "frames_target": len(target),
        "mask_fraction": stats.area_fraction,
        "mask_stability": stats.stability,
        "inside_change": float(diff[mask].mean()) if mask.any() else 0.0,
        "outside_change": float(diff[outside].mean()) if outside.any() else 0.0,
        "total_change": float(diff.mean()),
    }


#: An edit region covering this much of every frame is a global edit, whatever its type.
FULL_FRAME = 0.999


def qc_rejection(
    metrics: dict[str, Any], edit_type: str, thresholds: QcThresholdsSettings
) -> str | None:
    """The first rule a pair breaks, as a sentence, or ``None`` when it passes."""
    t = thresholds
    if metrics["frames_source"] != metrics["frames_target"]:
        return f"frame counts differ (source {metrics['frames_source']}, target {metrics['frames_target']})"
    if metrics["total_change"] < t.min_total_change:
        return f"target is (nearly) identical to source (mean change {metrics['total_change']:.2f})"
    if edit_type in GLOBAL_EDITS or metrics["mask_fraction"] >= FULL_FRAME:
        return None  # a global edit (or a hybrid with a global part): no region to check
    if metrics["mask_fraction"] < t.min_mask_fraction:
        return f"edit mask (nearly) empty ({metrics['mask_fraction']:.2%} of the frame)"
    if metrics["mask_fraction"] > t.max_mask_fraction:
        return f"edit mask too large for a local edit ({metrics['mask_fraction']:.0%} of the frame)"
    if metrics["mask_stability"] < t.min_mask_stability:
        return f"edit mask unstable over time (consecutive IoU {metrics['mask_stability']:.2f})"
    if metrics["outside_change"] > t.max_outside_change:
        return f"changes outside the edit region (mean {metrics['outside_change']:.1f} grey levels)"
    if metrics["inside_change"] < t.min_inside_change:
        return f"too little change inside the edit region (mean {metrics['inside_change']:.1f})"
    return None
