"""Turn a validated video into fixed-size, fixed-rate RGB frames (and its masks alike).

Every ingested video becomes ``uint8 [T, H, W, 3]`` at one frame size and frame rate, upright,
at most ``max_frames`` long. Time is resampled by presentation timestamp, not by frame index,
so variable-frame-rate phone footage keeps its real timing. ``source_indices`` records which
decoded source frame each output frame shows, so sidecar masks can be put through exactly the
same selection and geometry (:func:`normalise_masks`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import av
import cv2
import numpy as np

from viva_pipelines.config.schema import LimitsSettings
from viva_pipelines.video.probe import (
    DEFAULT_LIMITS,
    VideoProbe,
    rotation_degrees,
    scan_video,
)

#: Container timestamps are often quantised to milliseconds (Matroska/WebM), so a source frame
#: up to 1 ms after an output tick counts as shown at that tick.
_TICK_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class NormaliseSpec:
    """Output geometry and timing.

    ``resize="crop"`` scales so the frame covers ``width x height`` and cuts the overhang from
    both sides equally; ``"pad"`` scales so it fits inside and fills the rest with black.
    """

    width: int
    height: int
    fps: float
    max_frames: int
    resize: Literal["crop", "pad"] = "crop"

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"output size must be positive and even (yuv420p), got {self.width}x{self.height}"
            )
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.resize not in ("crop", "pad"):
            raise ValueError(f"resize must be 'crop' or 'pad', got {self.resize!r}")


@dataclass
class NormalisedVideo:
    """Normalised frames and where they came from.

    ``frames``: ``uint8 [T, height, width, 3]`` RGB, upright; ``source_indices``: ``int64 [T]``,
    the decoded source frame (0-based, presentation order) behind each output frame.
    """

    frames: np.ndarray
    fps: float
    source_indices: np.ndarray
    probe: VideoProbe


def decode_normalised(
    path: str | os.PathLike, spec: NormaliseSpec, limits: LimitsSettings = DEFAULT_LIMITS
) -> NormalisedVideo:
    """Validate, probe and normalise ``path`` in one pass over the file.

    Output frame ``k`` shows the last source frame whose timestamp is at or before ``k / fps``
    (from the first frame); frames run until the source's duration or ``spec.max_frames``.
    Once the output is full, decoding stops and the rest of the file is only demuxed to
    complete the probe (see :func:`~viva_pipelines.video.probe.scan_video`), so a ten-minute
    upload costs a demux of the rest, not a decode of it. Raises
    :class:`~viva_pipelines.video.probe.VideoRejected` like ``probe_video``.
    """
    resampler = _Resampler(spec)
    probe = scan_video(path, limits, resampler.push)
    resampler.finish(probe.duration_s)
    return NormalisedVideo(
        frames=np.stack(resampler.frames),
        fps=float(spec.fps),
        source_indices=np.asarray(resampler.indices, dtype=np.int64),
        probe=probe,
    )


class _Resampler:
    """Picks, converts and fits source frames as they stream out of the decoder.

    Only the latest decoded frame is held (as a libav frame, not yet converted), because it is
    the answer for every output tick before the next frame's timestamp. A source frame shown at
    several ticks is converted once.
    """

    def __init__(self, spec: NormaliseSpec) -> None:
        self.spec = spec
        self.frames: list[np.ndarray] = []  # each uint8 [height, width, 3]
        self.indices: list[int] = []
        self._latest: tuple[int, av.VideoFrame] | None = None

    @property
    def full(self) -> bool:
        return len(self.indices) >= self.spec.max_frames

    def _next_tick(self) -> float:
        return len(self.indices) / self.spec.fps

    def push(self, index: int, time_s: float, frame: av.VideoFrame) -> bool:
        """Take source frame ``index`` shown from ``time_s``; True once no more are needed."""
        while self._latest is not None and not self.full:
            if self._next_tick() >= time_s - _TICK_TOLERANCE_S:
                break
            self._emit()
        self._latest = None if self.full else (index, frame)
        return self.full

    def finish(self, duration_s: float) -> None:
        """Fill the ticks up to the end of the last source frame."""
        while self._latest is not None and not self.full:
            if self.indices and self._next_tick() >= duration_s - _TICK_TOLERANCE_S:
                break  # (the first tick is always shown, however short the source)
            self._emit()

    def _emit(self) -> None:
        assert self._latest is not None
        index, frame = self._latest
        if self.indices and self.indices[-1] == index:
            image = self.frames[-1]
        else:
            rgb = frame.to_ndarray(format="rgb24")
            image = fit_frame(np.rot90(rgb, rotation_degrees(frame) // 90), self.spec)
        self.frames.append(image)
        self.indices.append(index)


def fit_frame(image: np.ndarray, spec: NormaliseSpec, *, nearest: bool = False) -> np.ndarray:
    """Scale and crop or pad ``image`` (``[h, w]`` or ``[h, w, C]``) to ``spec``'s size.

    Pixels keep their square shape: one scale factor for both axes, then the centred crop or
    pad. Downscaling uses area averaging (no aliasing), upscaling bilinear; ``nearest`` keeps
    values as they are, for id maps. Cropping and padding are centred the same way in both
    cases, so a mask pixel lands where its video pixel lands.
    """
    h, w = image.shape[:2]
    if spec.resize == "crop":
        scale = max(spec.width / w, spec.height / h)
    else:
        scale = min(spec.width / w, spec.height / h)
    # Rounding keeps the cover side >= the target in crop mode and <= it in pad mode.
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        if nearest:
            interpolation = cv2.INTER_NEAREST_EXACT
        else:
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=interpolation)
    if spec.resize == "crop":
        top, left = (new_h - spec.height) // 2, (new_w - spec.width) // 2
        return np.ascontiguousarray(image[top : top + spec.height, left : left + spec.width])
    out = np.zeros((spec.height, spec.width, *image.shape[2:]), dtype=image.dtype)
    top, left = (spec.height - new_h) // 2, (spec.width - new_w) // 2
    out[top : top + new_h, left : left + new_w] = image
    return out


def normalise_masks(
    masks: np.ndarray, source_indices: np.ndarray, spec: NormaliseSpec, probe: VideoProbe
) -> np.ndarray:
    """Put id masks through the same frame selection and geometry as the video.

    ``masks``: ``uint8 [probe.frame_count, H, W]``, one per decoded source frame, aligned with
    the *upright* (displayed) frames, i.e. ``H x W`` is ``probe.display_height x
    probe.display_width``. That is what an annotator or a rotation-aware decoder sees, so
    masks are never rotated here; for unrotated videos it is simply the stored size.
    Nearest-neighbour scaling and zero padding keep every value a valid id (0 = background).
    Returns ``uint8 [len(source_indices), spec.height, spec.width]``; raises ``ValueError``
    when the masks do not match the source video.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != np.uint8:
        raise ValueError(f"masks must be uint8 [T, H, W], got {masks.dtype} {masks.shape}")
    frames, height, width = masks.shape
    if frames != probe.frame_count:
        raise ValueError(f"masks have {frames} frames but the source video has {probe.frame_count}")
    if (height, width) != (probe.display_height, probe.display_width):
        hint = ""
        if probe.rotation in (90, 270) and (height, width) == (probe.height, probe.width):
            hint = (
                f"; they match the stored frames, but the video is rotated {probe.rotation} degrees"
            )
        raise ValueError(
            f"masks are {width}x{height} but the upright source frames are"
            f" {probe.display_width}x{probe.display_height}{hint}"
        )
    indices = np.asarray(source_indices, dtype=np.int64)
    if indices.ndim != 1 or not indices.size:
        raise ValueError(f"source_indices must be a non-empty 1-D array, got {indices.shape}")
    if indices.min() < 0 or indices.max() >= frames:
        raise ValueError(f"source_indices out of range for {frames} mask frames")
    fitted = {i: fit_frame(masks[i], spec, nearest=True) for i in np.unique(indices).tolist()}
    return np.stack([fitted[i] for i in indices.tolist()])
