"""Small PNG previews for Dagster metadata: people would rather look than read."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def to_png(image: np.ndarray) -> bytes:
    """``uint8 [H, W, 3]`` (or ``[H, W]``) → PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def grid(rows: list[list[np.ndarray]], height: int = 96) -> np.ndarray:
    """Images resized to ``height`` and laid out row by row (short rows padded white)."""
    resized = [[_fit(image, height) for image in row] for row in rows]
    strips = [np.concatenate(row, axis=1) for row in resized if row]
    width = max(strip.shape[1] for strip in strips)
    padded = [
        np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips
    ]
    return np.concatenate(padded, axis=0)


def markdown_image(png: bytes, alt: str) -> str:
    """Inline Markdown image, rendered by the Dagster UI's metadata view."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _fit(image: np.ndarray, height: int) -> np.ndarray:
    picture = Image.fromarray(image).convert("RGB")
    width = max(1, round(picture.width * height / picture.height))
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))
