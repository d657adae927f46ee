"""Still images (reference pictures, image pairs, masks) decoded in one place.

Every image that enters from outside (a ``viva edit --reference``, an external image pair, a
benchmark suite's reference, a chat request's data URL) and every one the pipeline wrote itself
is read here, so that a file which is not an image, a truncated one and a decompression bomb
(a small PNG that declares 30000x30000 pixels; Pillow refuses more than about 179 million) all
end in the same :class:`ImageUnreadable`, which each caller turns into its own one-line reason.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from viva_pipelines.manifests import one_line_reason


class ImageUnreadable(ValueError):
    """The bytes are not an image Pillow can decode within its size limit; the message says
    why in one line."""


def decode_image(data: bytes | Path, mode: str = "RGB") -> np.ndarray:
    """The image in ``data`` (its bytes, or a file) as ``uint8 [H, W, 3]`` (``mode`` "RGB") or
    ``[H, W]`` ("L"); any palette, alpha, grey or 16-bit image is converted."""
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as image:
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageUnreadable(one_line_reason(exc)) from None
