"""Per-object track statistics and the rules that drop lost or degenerate tracks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from viva_pipelines.config.schema import TrackRulesSettings


@dataclass(frozen=True)
class TrackStats:
    """Summary of a ``bool [T, H, W]`` track.

    ``areas``: visible pixels per frame; ``bboxes``: ``(x0, y0, x1, y1)`` per frame, exclusive
    ends, ``None`` where the object is not visible; ``stability``: mean IoU of consecutive
    frames where at least one of the two is visible (1.0 = rigid and still).
    """

    areas: list[int]
    bboxes: list[tuple[int, int, int, int] | None]
    area_fraction: float  # mean over frames of area / (H * W)
    visible_fraction: float  # frames with any visible pixel / T
    stability: float


def track_stats(masks: np.ndarray) -> TrackStats:
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise ValueError(f"masks must be bool [T, H, W] with T > 0, got {masks.shape}")
    t, h, w = masks.shape
    areas = masks.reshape(t, -1).sum(axis=1)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    bboxes: list[tuple[int, int, int, int] | None] = []
    for frame in range(t):
        if not areas[frame]:
            bboxes.append(None)
            continue
        ys, xs = np.flatnonzero(rows[frame]), np.flatnonzero(cols[frame])
        bboxes.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
    inter = (masks[1:] & masks[:-1]).reshape(t - 1, h * w).sum(axis=1)  # (empty for one frame)
    union = (masks[1:] | masks[:-1]).reshape(t - 1, h * w).sum(axis=1)
    valid = union > 0
    stability = float((inter[valid] / union[valid]).mean()) if valid.any() else 1.0
    return TrackStats(
        areas=[int(a) for a in areas],
        bboxes=bboxes,
        area_fraction=float(areas.mean() / (h * w)),
        visible_fraction=float((areas > 0).mean()),
        stability=stability,
    )


def track_rejection(stats: TrackStats, rules: TrackRulesSettings) -> str | None:
    """Why a track is unusable for editing, or ``None`` when it is fine."""
    if stats.visible_fraction < rules.min_visible_fraction:
        return (
            f"lost: visible in {stats.visible_fraction:.0%} of frames "
            f"(< {rules.min_visible_fraction:.0%})"
        )
    if stats.area_fraction < rules.min_area_fraction:
        return f"degenerate: mean area {stats.area_fraction:.2%} of the frame (< {rules.min_area_fraction:.2%})"
    if stats.area_fraction > rules.max_area_fraction:
        return f"degenerate: mean area {stats.area_fraction:.0%} of the frame (> {rules.max_area_fraction:.0%})"
    if stats.stability < rules.min_stability:
        return (
            f"unstable: consecutive-frame IoU {stats.stability:.2f} (< {rules.min_stability:.2f})"
        )
    return None
