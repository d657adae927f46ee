"""Small PNG previews for Dagster metadata: people would rather look than read."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

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


def curves(history: Mapping[str, Sequence[Sequence[float]]], title: str) -> bytes:
    """Training curves as a PNG: one small panel per metric (``name -> [[step, value], ...]``),
    each on its own scale (a reward of ~0.05 and one of ~12 do not share an axis), in the
    order given; metrics without points are left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file, in any process
    from matplotlib import pyplot as plt

    series = {name: np.asarray(points, dtype=float) for name, points in history.items() if points}
    if not series:
        raise ValueError(f"{title}: no curve has a point to draw")
    columns = min(3, len(series))
    rows = -(-len(series) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for axis, (name, points) in zip(axes.flat, series.items(), strict=False):
        axis.plot(points[:, 0], points[:, 1], marker="." if len(points) < 30 else None)
        axis.set_title(name, fontsize=9)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(series) :]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Inline Markdown image, rendered by the Dagster UI's metadata view."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _fit(image: np.ndarray, height: int) -> np.ndarray:
    picture = Image.fromarray(image).convert("RGB")
    width = max(1, round(picture.width * height / picture.height))
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))
