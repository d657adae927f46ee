"""How clips enter and leave the model: frame picking, fitting, and the [-1, 1] pixel range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from viva_pipelines.video.normalise import NormaliseSpec, fit_frame

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ClipGeometry:
    """A model clip: ``frames`` frames, every ``frame_stride``-th of the stored video, scaled
    and centre-cropped to ``height x width``. Training and editing cut clips the same way."""

    frames: int
    frame_stride: int
    height: int
    width: int

    def frame_indices(self, available: int) -> np.ndarray:
        """Indices into a clip of ``available`` frames; evenly spread when it is too short."""
        span = (self.frames - 1) * self.frame_stride + 1
        if available >= span:
            return np.arange(self.frames) * self.frame_stride
        return np.linspace(0, available - 1, self.frames).round().astype(int)

    def fit(self, image: np.ndarray, *, nearest: bool = False) -> np.ndarray:
        """``[H, W]`` or ``[H, W, C]`` to ``[height, width(, C)]`` (area scaling, centre crop;
        ``nearest`` keeps values as they are, for masks)."""
        spec = NormaliseSpec(width=self.width, height=self.height, fps=1, max_frames=1)
        return fit_frame(image, spec, nearest=nearest)

    def cut(self, frames: np.ndarray, *, nearest: bool = False) -> np.ndarray:
        """``[T, H, W(, C)]`` -> the model's ``[frames, height, width(, C)]``: frames picked by
        :meth:`frame_indices`, each fitted (see :meth:`fit`)."""
        picked = frames[self.frame_indices(len(frames))]
        return np.stack([self.fit(f, nearest=nearest) for f in picked])


def to_model_pixels(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [T, H, W, 3]`` -> ``float32 [3, T, H, W]`` in [-1, 1]."""
    import torch

    return torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[3, T, H, W]`` in [-1, 1] -> ``uint8 [T, H, W, 3]``."""
    import torch

    pixels = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()
