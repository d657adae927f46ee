"""Exact pixel operations on clips that every editing backend and edit generator shares.

Frames are ``uint8 [T, H, W, 3]`` RGB and masks ``bool [T, H, W]`` throughout.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Lab chroma below which a colour counts as grey (its hue is noise).
_ACHROMATIC = 10.0
#: Most channels OpenCV's filters take in one image.
_MAX_CHANNELS = 128


def check_clip(frames: np.ndarray, masks: np.ndarray | None = None) -> None:
    """Fail early, with the shapes in the message, on anything but ``uint8 [T, H, W, 3]``
    frames and matching ``bool [T, H, W]`` masks."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if masks is not None and (masks.dtype != np.bool_ or masks.shape != frames.shape[:3]):
        raise ValueError(
            f"masks must be bool {list(frames.shape[:3])}, got {masks.dtype} {list(masks.shape)}"
        )


def dilate_masks(masks: np.ndarray, radius: int) -> np.ndarray:
    """``bool [T, H, W]`` grown by a disc of ``radius`` pixels in every frame.

    Object masks from trackers (and codecs' ringing) leave a rim of object-coloured pixels just
    outside the mask; growing it takes the rim with the object.
    """
    if radius <= 0:
        return masks.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = np.empty(masks.shape, bool)
    # Frames as the channels of [H, W, T] images: one call per _MAX_CHANNELS frames.
    for start in range(0, len(masks), _MAX_CHANNELS):
        chunk = slice(start, start + _MAX_CHANNELS)
        stacked = np.ascontiguousarray(masks[chunk].transpose(1, 2, 0), dtype=np.uint8)
        grown[chunk] = cv2.dilate(stacked, kernel).reshape(stacked.shape).transpose(2, 0, 1)
    return grown


# -- colour -------------------------------------------------------------------------------------


def changed_pixels(before: np.ndarray, after: np.ndarray, threshold: int) -> np.ndarray:
    """``bool [..., H, W]``: where a channel of ``after`` moved from ``before`` (``uint8
    [..., H, W, 3]``) by more than ``threshold`` grey levels."""
    return np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=-1) > threshold


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``float32 [N, 3]`` CIE Lab (L in 0..100) of ``uint8 [N, 3]`` RGB."""
    pixels = rgb.reshape(-1, 1, 3).astype(np.float32) / 255
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """``uint8 [N, 3]`` RGB of ``float32 [N, 3]`` Lab, clipped to the gamut."""
    rgb = cv2.cvtColor(lab.reshape(-1, 1, 3).astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.round(rgb.reshape(-1, 3) * 255), 0, 255).astype(np.uint8)


def recolor(frames: np.ndarray, masks: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """The object under ``masks`` painted ``rgb``, its shading and texture kept; the rest of
    every frame untouched.

    In Lab, every pixel takes the target's hue; lightness is shifted by the difference of the
    medians and chroma scaled by the ratio, so highlights, shadows and texture survive. An
    achromatic object (white, grey, black: hue undefined) gets the target's chroma outright.
    One transform for the whole clip, so the new colour does not flicker.
    """
    check_clip(frames, masks)
    out = frames.copy()
    if not masks.any():
        return out
    lab = rgb_to_lab(frames[masks])
    target = rgb_to_lab(np.array(rgb, np.uint8))[0]
    lab[:, 0] = np.clip(lab[:, 0] + target[0] - np.median(lab[:, 0]), 0, 100)
    target_chroma = np.hypot(target[1], target[2])
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    median_chroma = np.median(chroma)
    if median_chroma < _ACHROMATIC:
        chroma = np.full_like(chroma, target_chroma)
    else:
        chroma = target_chroma * np.minimum(chroma / median_chroma, 1.5)
    hue = np.arctan2(target[2], target[1])
    lab[:, 1], lab[:, 2] = chroma * np.cos(hue), chroma * np.sin(hue)
    out[masks] = lab_to_rgb(lab)
    return out
