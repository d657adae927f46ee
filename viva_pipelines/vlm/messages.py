"""Chat messages in the OpenAI chat-completions shape, used by every backend.

One format everywhere keeps the prompt builders backend-agnostic and makes the cache key simple:
images travel as PNG ``data:`` URLs, so hashing the messages hashes the image bytes. PNG is
lossless, so the local backend decodes exactly the pixels the HTTP endpoint would have seen.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image

from viva_pipelines.video.images import decode_image

Message = dict[str, Any]

_PNG_PREFIX = "data:image/png;base64,"


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(frame: np.ndarray) -> dict[str, Any]:
    """A content part holding one ``uint8 [H, W, 3]`` frame as a PNG data URL."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] frame, got {frame.dtype} {frame.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="PNG")
    url = _PNG_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


def decode_image_url(url: str) -> Image.Image:
    """The RGB image inside a base64 ``data:`` URL (a ``ValueError`` says why it is not one). Remote URLs are refused: a backend that
    fetched them would make the answer depend on the network, not on the cached messages."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ValueError(f"only base64 data: image URLs are supported, got {url[:40]!r}…")
    try:
        raw = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"malformed base64 in image data URL: {exc}") from exc
    return Image.fromarray(decode_image(raw))  # not an image, or a bomb: ImageUnreadable
