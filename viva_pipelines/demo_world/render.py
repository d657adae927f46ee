"""Render a :class:`SceneSpec` to frames and an exact visible-object id map.

Objects are painted back to front (painter's algorithm by ``z``) with hard edges, and the id map
is written by the same coverage test that paints the pixels, so ``masks == k`` is exactly where
object ``k`` is visible: occluded parts belong to the object in front.
"""

from __future__ import annotations

import math
from functools import cache

import cv2
import numpy as np
from skimage import data as skdata

from viva_pipelines.demo_world.scene import SPRITES, ObjectSpec, SceneSpec

#: Fixed-point bits for OpenCV drawing: sub-pixel positions, so motion is smooth.
_SHIFT = 4


@cache
def background_photo(name: str) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB photo shipped with scikit-image."""
    image = getattr(skdata, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


@cache
def sprite_rgba(name: str) -> np.ndarray:
    """``uint8 [h, w, 4]``: the sprite's photo crop with an elliptical cut-out as alpha."""
    source = SPRITES[name]
    crop = background_photo(source.image)[source.top : source.bottom, source.left : source.right]
    h, w = crop.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    cv2.ellipse(alpha, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 255, -1)
    return np.dstack([crop, alpha])


def camera_view(scene: SceneSpec, u: float) -> np.ndarray:
    """The background at clip time ``u``: ``uint8 [height, width, 3]``."""
    photo = background_photo(scene.camera.image)
    ph, pw = photo.shape[:2]
    cx, cy, zoom = scene.camera.at(u)
    aspect = scene.width / scene.height
    crop_h = min(ph, pw / aspect) / max(zoom, 1.0)
    crop_w = crop_h * aspect
    x0 = min(max(cx * pw - crop_w / 2, 0.0), pw - crop_w)
    y0 = min(max(cy * ph - crop_h / 2, 0.0), ph - crop_h)
    scale = scene.width / crop_w
    matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float64)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    if scale < 0.5:  # pre-shrink so the affine warp does not alias on big photos
        factor = 0.5 / scale
        small = cv2.resize(
            photo, (round(pw / factor), round(ph / factor)), interpolation=cv2.INTER_AREA
        )
        matrix[:, :2] *= factor
        photo, interpolation = small, cv2.INTER_LINEAR
    return cv2.warpAffine(
        photo,
        matrix,
        (scene.width, scene.height),
        flags=interpolation,
        borderMode=cv2.BORDER_REFLECT,
    )


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Vertices ``int32 [N, 2]`` (fixed point) of a regular shape of bounding size ``size``."""
    r = size / 2
    if kind == "square":
        points = [(r * math.cos(a), r * math.sin(a)) for a in np.radians([45, 135, 225, 315])]
        points = [(x * math.sqrt(2) * 0.8, y * math.sqrt(2) * 0.8) for x, y in points]
    elif kind == "diamond":
        points = [(0, -r), (0.7 * r, 0), (0, r), (-0.7 * r, 0)]
    elif kind == "triangle":
        points = [(r * math.cos(a), r * math.sin(a)) for a in np.radians([-90, 30, 150])]
    elif kind == "hexagon":
        points = [(r * math.cos(a), r * math.sin(a)) for a in np.radians(range(0, 360, 60))]
    elif kind == "star":
        points = [
            (
                (r if i % 2 == 0 else 0.45 * r) * math.cos(a),
                (r if i % 2 == 0 else 0.45 * r) * math.sin(a),
            )
            for i, a in enumerate(np.radians(np.arange(-90, 270, 36)))
        ]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    turn = math.radians(angle)
    cos, sin = math.cos(turn), math.sin(turn)
    rotated = [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]
    return np.round(np.array(rotated) * (1 << _SHIFT)).astype(np.int32)


def object_layer(
    obj: ObjectSpec, u: float, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where ``obj`` covers the frame at time ``u`` and what it shows there:
    ``(coverage bool [H, W], colours uint8 [H, W, 3])``."""
    x, y = obj.trajectory.position(u)
    cx, cy, size = x * width, y * height, obj.size * height
    coverage = np.zeros((height, width), np.uint8)
    colours = np.zeros((height, width, 3), np.uint8)
    kind = obj.entry.kind
    if kind == "sprite":
        rgba = sprite_rgba(obj.entry.sprite)
        h = max(2, round(size))
        w = max(2, round(size * rgba.shape[1] / rgba.shape[0]))
        sprite = cv2.resize(rgba, (w, h), interpolation=cv2.INTER_AREA)
        top, left = round(cy - h / 2), round(cx - w / 2)
        fy0, fx0 = max(top, 0), max(left, 0)
        fy1, fx1 = min(top + h, height), min(left + w, width)
        if fy1 > fy0 and fx1 > fx0:
            patch = sprite[fy0 - top : fy1 - top, fx0 - left : fx1 - left]
            coverage[fy0:fy1, fx0:fx1] = patch[..., 3] >= 128
            colours[fy0:fy1, fx0:fx1] = patch[..., :3]
        return coverage.astype(bool), colours
    if kind == "circle":
        centre = (round(cx * (1 << _SHIFT)), round(cy * (1 << _SHIFT)))
        cv2.circle(coverage, centre, round(size / 2 * (1 << _SHIFT)), 1, -1, cv2.LINE_8, _SHIFT)
    else:
        polygon = _polygon(kind, cx, cy, size, obj.spin * u)
        cv2.fillPoly(coverage, [polygon], 1, cv2.LINE_8, _SHIFT)
    colours[:] = obj.rgb
    return coverage.astype(bool), colours


def apply_tone(frame: np.ndarray, tone: str, seed: int, u: float) -> np.ndarray:
    """A global look applied after compositing (the "tone"/weather edits of the benchmark)."""
    if tone == "normal":
        return frame
    f = frame.astype(np.float32)
    if tone == "night":
        f = f * 0.35 + np.array([0, 5, 30], np.float32)
    elif tone == "sepia":
        sepia = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
        f = f @ sepia.T.astype(np.float32)
    elif tone == "sunset":
        f = f * np.array([1.15, 0.85, 0.6], np.float32) + np.array([30, 10, 0], np.float32)
    elif tone == "snow":
        grey = f.mean(axis=-1, keepdims=True)
        f = 0.5 * f + 0.5 * grey + 40
        rng = np.random.default_rng(seed)
        h, w = frame.shape[:2]
        flakes = rng.random((200, 2)) * [w, h]
        for fx, fy in flakes:
            yy = int((fy + u * h * 0.5) % h)
            cv2.circle(f, (int(fx), yy), 1, (255, 255, 255), -1)
    return np.clip(f, 0, 255).astype(np.uint8)


def render(scene: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(frames uint8 [T, H, W, 3], masks uint8 [T, H, W])`` where ``masks`` holds, per pixel,
    the id of the visible (front-most) object and 0 for background."""
    t_count, h, w = scene.num_frames, scene.height, scene.width
    frames = np.empty((t_count, h, w, 3), np.uint8)
    masks = np.zeros((t_count, h, w), np.uint8)
    back_to_front = sorted(scene.objects, key=lambda o: (o.z, o.id))
    for t in range(t_count):
        u = t / max(t_count - 1, 1)
        frame = camera_view(scene, u).copy()
        for obj in back_to_front:
            coverage, colours = object_layer(obj, u, w, h)
            frame[coverage] = colours[coverage]
            masks[t][coverage] = obj.id
        frames[t] = apply_tone(frame, scene.tone, scene.seed, u)
    return frames, masks
