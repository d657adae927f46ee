"""The CPU editing backend: classical OpenCV operations standing in for generative models.

Good enough for the demo world (flat shapes and cut-out sprites over photos filmed by a slowly
moving camera) and fast enough to run inside ingestion-sized batches: every operation is a
handful of OpenCV/numpy calls per frame or per clip, never a Python loop over pixels.

Frames are ``uint8 [T, H, W, 3]`` RGB and masks ``bool [T, H, W]`` throughout.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Callable
from functools import cache

import cv2
import numpy as np

from viva_pipelines.demo_world.render import object_layer, sprite_rgba
from viva_pipelines.demo_world.scene import (
    PALETTE,
    SHAPES,
    SPRITES,
    BankEntry,
    ObjectSpec,
    Trajectory,
)
from viva_pipelines.pairs.pixels import check_clip, dilate_masks

#: Side of the square canvas shapes are drawn on before being scaled into a mask's box: large
#: enough that scaling down to any clip resolution keeps clean edges.
_SHAPE_CANVAS = 128
#: A reference pixel belongs to its plain background when no channel differs from the border
#: colour by more than this (tight, so near-white objects on white survive).
_KEY_TOLERANCE = 12
#: A pasted object fits its mask at a scale (of its mask's bounding box) where at least
#: _FIT_INSIDE of its pixels fall inside the mask in at least _FIT_FRAMES of the frames.
_FIT_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
_FIT_INSIDE = 0.95
_FIT_FRAMES = 0.8
#: Camera motion is estimated on frames shrunk to this many pixels on their longer side.
_MOTION_SIDE = 64
#: ECC refinement stops after this many iterations or when the update is this small.
_ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 6, 1e-4)
#: Largest frame-to-frame change of the camera's linear part (zoom, rotation, shear).
_MAX_LINEAR_CHANGE = 0.1
#: Rec. 601 luma weights (RGB).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# -- inpainting ---------------------------------------------------------------------------------


def _plausible(step: np.ndarray, size: tuple[int, int]) -> bool:
    """A frame-to-frame camera motion a real clip could have: near-identity linear part and a
    translation under a quarter of the frame (``size``: width, height)."""
    w, h = size
    linear_ok = np.abs(step[:, :2] - np.eye(2)).max() < _MAX_LINEAR_CHANGE
    return bool(linear_ok and abs(step[0, 2]) < w / 4 and abs(step[1, 2]) < h / 4)


def _misfit(current: np.ndarray, previous: np.ndarray, seen: np.ndarray, step: np.ndarray) -> float:
    """Mean absolute difference between ``current`` and ``previous`` warped onto it by
    ``step`` (current -> previous coordinates), over pixels seen in both."""
    h, w = current.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(previous, step, (w, h), flags=flags)
    valid = cv2.warpAffine(seen[0], step, (w, h), flags=flags) == 255
    valid &= seen[1] == 255
    return float(np.abs(warped - current)[valid].mean()) if valid.any() else np.inf


def estimate_motion(
    frames: np.ndarray, holes: np.ndarray, *, max_side: int = _MOTION_SIDE
) -> np.ndarray:
    """``float64 [T, 3, 3]``: affine maps from each frame's pixel coordinates to the middle
    frame's, i.e. the camera motion (pan, zoom, a little rotation).

    Each consecutive step is started from phase correlation (a global translation, robust to
    large shifts) and refined by ECC to an affine map, on grey frames shrunk to ``max_side``
    with hole pixels ignored, so moving objects do not vote. A step is kept only if plausible
    and if it matches the frames better than no motion: a wrong motion pastes the wrong
    background, no motion at worst leaves more to the spatial inpainting.
    """
    t_count, h, w = holes.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(round(w * scale), 8), max(round(h * scale), 8))
    gray = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in frames @ _LUMA / 255]
    seen = [
        cv2.resize((~m).astype(np.uint8) * 255, size, interpolation=cv2.INTER_NEAREST)
        for m in holes
    ]
    # Phase correlation sees the whole frame: holes take the frame's mean, so they add nothing.
    flat = [
        np.where(m == 255, g, g[m == 255].mean() if m.any() else 0)
        for g, m in zip(gray, seen, strict=True)
    ]
    window = cv2.createHanningWindow(size, cv2.CV_32F)
    identity = np.eye(2, 3, dtype=np.float32)
    to_first = [np.eye(3)]
    for t in range(1, t_count):
        (dx, dy), _ = cv2.phaseCorrelate(flat[t - 1], flat[t], window)
        step = np.array([[1, 0, -dx], [0, 1, -dy]], np.float32)  # current -> previous
        with contextlib.suppress(cv2.error):  # ECC did not converge: keep the guess
            _, step = cv2.findTransformECC(
                gray[t], gray[t - 1], step.copy(), cv2.MOTION_AFFINE, _ECC_CRITERIA, seen[t - 1], 1
            )
        pair = (seen[t - 1], seen[t])
        misfit = _misfit(gray[t], gray[t - 1], pair, step)
        if not _plausible(step, size) or misfit >= _misfit(gray[t], gray[t - 1], pair, identity):
            step = identity
        full = np.eye(3)
        full[:2] = step
        full[:2, 2] /= scale
        to_first.append(to_first[-1] @ full)
    to_middle = np.linalg.inv(to_first[t_count // 2])
    return np.stack([to_middle @ m for m in to_first])


def temporal_fill(
    frames: np.ndarray, holes: np.ndarray, motion: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fill each hole pixel with the same background point seen, unmasked, in the nearest frame
    in time (the previous one on ties). Returns ``(frames, still_missing bool [T, H, W])``.

    Frames are warped by ``motion`` (``[T, 3, 3]``, see :func:`estimate_motion`) onto one
    canvas in the middle frame's coordinates, where a background point has the same position
    in every frame; the search for the nearest frame is vectorised over the hole pixels (at
    most T passes), then each frame's fill is warped back. With a static camera the warps are
    identities and filled pixels are exact copies of other frames' pixels.
    """
    t_count, h, w = holes.shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], float).T
    reach = np.concatenate([(m @ corners)[:2] for m in motion], axis=1)  # [2, 4T] (x, y)
    x0, y0 = np.floor(np.maximum(reach.min(axis=1), [-w, -h])).astype(int)
    x1, y1 = np.ceil(np.minimum(reach.max(axis=1), [2 * w, 2 * h])).astype(int)
    canvas_size = (x1 - x0, y1 - y0)
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], float)
    warps = [(shift @ m)[:2] for m in motion]
    # Alpha: 255 where the frame shows background, 128 in holes, 0 outside the frame. After a
    # bilinear warp, 255 means every contributing pixel was background.
    alpha = np.where(holes, 128, 255).astype(np.uint8)[..., None]
    canvas = np.stack(
        [
            cv2.warpAffine(np.dstack([f, a]), m, canvas_size, flags=cv2.INTER_LINEAR)
            for f, a, m in zip(frames, alpha, warps, strict=True)
        ]
    )
    known = canvas[..., 3] == 255
    # Only hole pixels are visited: for each, the nearest frame that knows that canvas point.
    t_idx, y_idx, x_idx = np.nonzero((canvas[..., 3] > 0) & ~known)
    source = np.full_like(t_idx, -1)
    searching = np.flatnonzero(known.any(axis=0)[y_idx, x_idx])  # the others stay missing
    for k in range(1, t_count):
        for sign in (-1, 1):
            if searching.size == 0:
                break
            candidate = t_idx[searching] + sign * k
            pick = (candidate >= 0) & (candidate < t_count)
            pick[pick] = known[candidate[pick], y_idx[searching[pick]], x_idx[searching[pick]]]
            source[searching[pick]] = candidate[pick]
            searching = searching[~pick]
    # Alpha now: 255 where the canvas holds background (the frame's own or copied), else 0;
    # after warping back, 255 means a hole pixel is wholly filled.
    canvas[..., 3] = np.where(known, 255, 0)
    done = source >= 0
    t_idx, y_idx, x_idx, source = t_idx[done], y_idx[done], x_idx[done], source[done]
    canvas[t_idx, y_idx, x_idx, :3] = canvas[source, y_idx, x_idx, :3]
    canvas[t_idx, y_idx, x_idx, 3] = 255
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    back = np.stack(
        [cv2.warpAffine(c, m, (w, h), flags=flags) for c, m in zip(canvas, warps, strict=True)]
    )
    got = holes & (back[..., 3] == 255)
    return np.where(got[..., None], back[..., :3], frames), holes & ~got


# -- drawing objects ----------------------------------------------------------------------------


def parse_object(prompt: str) -> BankEntry:
    """The demo-world object a prompt names: a sprite ("a cat") or a colour and a shape
    ("a yellow star"). A missing colour is picked from the prompt's hash and a missing shape is
    a circle, so any prompt draws something, and always the same thing."""
    text = prompt.lower()
    for name in sorted(SPRITES, key=len, reverse=True):
        if re.search(rf"\b{re.escape(name)}\b", text):
            return BankEntry("sprite", sprite=name)
    colour = next((c for c in PALETTE if re.search(rf"\b{c}\b", text)), None)
    if colour is None:
        colour = sorted(PALETTE)[zlib.crc32(text.encode()) % len(PALETTE)]
    shape = next((s for s in SHAPES if re.search(rf"\b{s}s?\b", text)), "circle")
    return BankEntry(shape, colour)


@cache
def entry_rgba(entry: BankEntry) -> np.ndarray:
    """``uint8 [h, w, 4]`` picture of a bank object, trimmed to its opaque pixels, drawn by the
    demo world's own renderer so swapped-in objects look like the world's objects. Cached, so
    read-only."""
    if entry.kind == "sprite":
        rgba = sprite_rgba(entry.sprite)
    else:
        centre = Trajectory((0.5, 0.5), (0.5, 0.5))
        spec = ObjectSpec(id=1, entry=entry, size=1.0, z=0, trajectory=centre)
        coverage, colours = object_layer(spec, 0.0, _SHAPE_CANVAS, _SHAPE_CANVAS)
        rgba = np.dstack([colours, coverage.astype(np.uint8) * 255])
    picture = _trim(rgba).copy()
    picture.setflags(write=False)
    return picture


def keyed_rgba(reference: np.ndarray) -> np.ndarray:
    """``uint8 [h, w, 4]`` from an RGB reference image: the plain background around the object
    (pixels of the border's colour connected to the border) made transparent, then trimmed.

    A reference without a plain background (a photo crop) stays fully opaque.
    """
    colour = np.median(_border(reference), axis=0)
    similar = np.abs(reference.astype(np.int16) - colour).max(axis=-1) <= _KEY_TOLERANCE
    _, labels = cv2.connectedComponents(similar.astype(np.uint8), connectivity=4)
    background = np.isin(labels, _border(labels)[_border(similar)])
    alpha = np.where(background, 0, 255).astype(np.uint8)
    if not alpha.any():
        alpha[:] = 255
    return _trim(np.dstack([reference, alpha]))


def _border(image: np.ndarray) -> np.ndarray:
    """The pixels along the four edges of an image, ``[2H + 2W, ...]``."""
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def _trim(rgba: np.ndarray) -> np.ndarray:
    """Crop an RGBA image to the bounding box of its opaque pixels."""
    ys, xs = np.nonzero(rgba[..., 3] >= 128)
    if ys.size == 0:
        return rgba
    return np.ascontiguousarray(rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def _placed(
    rgba: np.ndarray, masks: np.ndarray, t: int, scale: float
) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """``(top, left, scaled rgba, opaque pixels inside the mask)`` for frame ``t``: ``rgba``
    at ``scale`` times the largest size that fits the mask's bounding box (aspect kept),
    centred in it; None where the mask is empty."""
    ys, xs = np.nonzero(masks[t].any(axis=1))[0], np.nonzero(masks[t].any(axis=0))[0]
    if ys.size == 0:
        return None
    box_h, box_w = ys[-1] - ys[0] + 1, xs[-1] - xs[0] + 1
    aspect = rgba.shape[1] / rgba.shape[0]
    h = max(1, round(scale * min(box_h, box_w / aspect)))
    w = max(1, min(box_w, round(h * aspect)))
    top, left = ys[0] + (box_h - h) // 2, xs[0] + (box_w - w) // 2
    shrink = h < rgba.shape[0]
    scaled = cv2.resize(rgba, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    opaque = scaled[..., 3] >= 128
    return top, left, scaled, opaque & masks[t, top : top + h, left : left + w]


def _fitting_scale(rgba: np.ndarray, masks: np.ndarray) -> float:
    """The largest of :data:`_FIT_SCALES` at which the object lies (almost) wholly inside the
    mask in most frames. Fitting only the bounding box would cut the new object to the old
    one's silhouette (a square swapped into a star's mask would come out star-shaped); one
    scale for the whole clip keeps its size from flickering."""
    visible = np.nonzero(masks.any(axis=(1, 2)))[0]
    for scale in _FIT_SCALES:
        inside = 0
        for t in visible:
            *_, scaled, paint = _placed(rgba, masks, t, scale)
            inside += paint.sum() >= _FIT_INSIDE * (scaled[..., 3] >= 128).sum()
        if inside >= _FIT_FRAMES * len(visible):
            return scale
    return _FIT_SCALES[-1]


def paste_into_masks(frames: np.ndarray, masks: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Paint the opaque pixels of ``rgba`` that fall inside each frame's mask, the picture
    scaled to fit the mask (see :func:`_fitting_scale`) and centred on its bounding box.
    Pixels outside ``masks`` are untouched."""
    out = frames.copy()
    scale = _fitting_scale(rgba, masks)
    for t in range(len(frames)):
        placed = _placed(rgba, masks, t, scale)
        if placed is not None:
            top, left, scaled, paint = placed
            h, w = paint.shape
            out[t, top : top + h, left : left + w][paint] = scaled[..., :3][paint]
    return out


# -- global looks -------------------------------------------------------------------------------


def _to_uint8(f: np.ndarray) -> np.ndarray:
    return np.clip(np.round(f), 0, 255).astype(np.uint8)


def _gray(frames: np.ndarray) -> np.ndarray:
    """``float32 [T, H, W, 1]`` luma."""
    return (frames.astype(np.float32) @ _LUMA)[..., None]


def _desaturate(f: np.ndarray, amount: float) -> np.ndarray:
    grey = f @ _LUMA
    return f * (1 - amount) + grey[..., None] * amount


def _per_frame(fn: Callable[[np.ndarray], np.ndarray], frames: np.ndarray) -> np.ndarray:
    return np.stack([fn(frame) for frame in frames])


def _hsv(frames: np.ndarray, code: int) -> np.ndarray:
    """Colour conversion of the whole clip at once (one tall image)."""
    t, h, w, _ = frames.shape
    return cv2.cvtColor(frames.reshape(t * h, w, 3), code).reshape(frames.shape)


def _night(frames: np.ndarray) -> np.ndarray:
    f = _desaturate(frames.astype(np.float32), 0.4)
    f = 255 * (f / 255) ** 1.4 * 0.5
    return _to_uint8(f * np.array([0.7, 0.85, 1.15], np.float32) + np.float32([0, 5, 25]))


def _sepia(frames: np.ndarray) -> np.ndarray:
    sepia = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    return _to_uint8(frames.astype(np.float32) @ sepia.T.astype(np.float32))


def _sunset(frames: np.ndarray) -> np.ndarray:
    h = frames.shape[1]
    glow = np.linspace(1.0, 0.2, h, dtype=np.float32)[None, :, None, None]
    f = frames.astype(np.float32) * np.array([1.1, 0.8, 0.55], np.float32)
    return _to_uint8(f + glow * np.array([70, 25, 0], np.float32))


def _snow(frames: np.ndarray) -> np.ndarray:
    """Paler, colder frames with flakes falling a few pixels per frame (fixed seed: the same
    clip always gets the same snow)."""
    f = _desaturate(frames.astype(np.float32), 0.5) * 0.8 + 50
    t_count, h, w, _ = frames.shape
    rng = np.random.default_rng(0)
    count = h * w // 60
    x = rng.integers(0, w, count)
    y0, speed = rng.uniform(0, h, count), rng.uniform(1, 3, count)
    y = (y0[None, :] + speed[None, :] * np.arange(t_count)[:, None]).astype(int) % h
    f[np.arange(t_count)[:, None], y, x[None, :]] = 250
    return _to_uint8(f)


def _winter(frames: np.ndarray) -> np.ndarray:
    f = _desaturate(frames.astype(np.float32), 0.55) * 0.85 + 35
    return _to_uint8(f * np.array([0.9, 0.97, 1.12], np.float32))


def _autumn(frames: np.ndarray) -> np.ndarray:
    """Greens and yellow-greens turned orange-red, everything a little warmer and richer."""
    hsv = _hsv(frames, cv2.COLOR_RGB2HSV).astype(np.float32)  # H in 0..179
    hue = hsv[..., 0]
    foliage = (hue >= 25) & (hue <= 95)
    hsv[..., 0] = np.where(foliage, 8 + (hue - 25) * (12 / 70), hue)
    hsv[..., 1] = np.minimum(hsv[..., 1] * 1.3 + 20, 255)
    f = _hsv(_to_uint8(hsv), cv2.COLOR_HSV2RGB).astype(np.float32)
    return _to_uint8(f * np.array([1.1, 0.95, 0.75], np.float32) + np.float32([15, 5, 0]))


def _foggy(frames: np.ndarray) -> np.ndarray:
    """Contrast lost toward a pale grey, more so higher up (farther away in most shots)."""
    h = frames.shape[1]
    density = np.linspace(0.65, 0.4, h, dtype=np.float32)[None, :, None, None]
    soft = _per_frame(lambda frame: cv2.GaussianBlur(frame, (3, 3), 0), frames)
    return _to_uint8(soft.astype(np.float32) * (1 - density) + 215 * density)


def _warm(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32) * np.array([1.15, 1.0, 0.75], np.float32)
    return _to_uint8(f + np.array([25, 10, 0], np.float32))


def _cool(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32) * np.array([0.75, 0.95, 1.15], np.float32)
    return _to_uint8(f + np.array([0, 10, 30], np.float32))


def _posterise(frames: np.ndarray, levels: int) -> np.ndarray:
    step = 255 / (levels - 1)
    return _to_uint8(np.round(frames.astype(np.float32) / step) * step)


def _cartoon(frames: np.ndarray) -> np.ndarray:
    """Flat colour regions (bilateral smoothing, posterised) with dark ink lines."""
    smooth = _per_frame(lambda frame: cv2.bilateralFilter(frame, 7, 60, 7), frames)
    flat = _posterise(smooth, 6)

    def ink(frame: np.ndarray) -> np.ndarray:
        gray = cv2.medianBlur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 5)
        return cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)

    lines = _per_frame(ink, smooth)
    return np.where(lines[..., None] == 0, (flat // 4), flat)


def _pencil_sketch(frames: np.ndarray) -> np.ndarray:
    """Colour-dodge of the luma by its blurred negative: dark strokes along edges on white."""
    gray = _gray(frames)[..., 0]
    blurred = _per_frame(lambda g: cv2.GaussianBlur(255 - g, (0, 0), 3), gray)
    sketch = np.minimum(gray * 255 / np.maximum(255 - blurred, 1), 255)
    shaded = sketch * 0.85 + gray * 0.15
    return np.repeat(_to_uint8(shaded)[..., None], 3, axis=-1)


def _watercolor(frames: np.ndarray) -> np.ndarray:
    """Soft washes (bilateral at half resolution), pigment pooling at edges, paper showing."""
    h, w = frames.shape[1:3]

    def wash(frame: np.ndarray) -> np.ndarray:
        small = cv2.resize(frame, (max(w // 2, 1), max(h // 2, 1)), interpolation=cv2.INTER_AREA)
        small = cv2.bilateralFilter(small, 5, 40, 5)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    washed = _per_frame(wash, frames).astype(np.float32)
    gray = washed @ _LUMA
    edges = np.hypot(*np.gradient(gray, axis=(1, 2)))
    pooling = 1 - 0.5 * np.clip(edges / 60, 0, 1)[..., None]
    paper = 1 + 0.05 * np.random.default_rng(0).standard_normal((h, w, 1)).astype(np.float32)
    return _to_uint8((washed * pooling * 0.85 + 0.15 * 250) * paper)


def _oil_painting(frames: np.ndarray) -> np.ndarray:
    """Blobby strokes (median filter then a small opening), fewer tones, richer colour."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    strokes = _per_frame(
        lambda frame: cv2.morphologyEx(cv2.medianBlur(frame, 5), cv2.MORPH_OPEN, kernel), frames
    )
    f = strokes.astype(np.float32)
    grey = (f @ _LUMA)[..., None]
    return _posterise(_to_uint8(grey + (f - grey) * 1.4), 12)


def _black_and_white(frames: np.ndarray) -> np.ndarray:
    gray = _gray(frames)
    return np.repeat(_to_uint8((gray - 128) * 1.15 + 128), 3, axis=-1)


#: Every look :meth:`OpenCVBackend.restyle` knows: name -> (words that ask for it, filter).
#: Applied in this order when a prompt asks for several (styles first, then tones).
_LOOKS: dict[str, tuple[re.Pattern[str], Callable[[np.ndarray], np.ndarray]]] = {
    "cartoon": (re.compile(r"\b(cartoon|comic|anime)"), _cartoon),
    "pencil_sketch": (re.compile(r"\b(pencil|sketch)"), _pencil_sketch),
    "watercolor": (re.compile(r"\bwater ?colou?r"), _watercolor),
    "oil_painting": (re.compile(r"\boil\b"), _oil_painting),
    "black_and_white": (
        re.compile(r"\b(black[- ]and[- ]white|monochrome|gr[ae]yscale)"),
        _black_and_white,
    ),
    "night": (re.compile(r"\b(night|midnight)"), _night),
    "sepia": (re.compile(r"\bsepia"), _sepia),
    "sunset": (re.compile(r"\b(sunset|dusk)"), _sunset),
    "snow": (re.compile(r"\bsnow"), _snow),
    "winter": (re.compile(r"\bwinter"), _winter),
    "autumn": (re.compile(r"\bautumn"), _autumn),
    "foggy": (re.compile(r"\b(fog|mist|haz[ey])"), _foggy),
    "warm": (re.compile(r"\bwarm"), _warm),
    "cool": (re.compile(r"\b(cool|cold)"), _cool),
}
LOOKS = tuple(_LOOKS)


def looks_in(prompt: str) -> list[str]:
    """Names (from :data:`LOOKS`) of the looks ``prompt`` asks for, in application order."""
    text = prompt.lower()
    return [name for name, (pattern, _) in _LOOKS.items() if pattern.search(text)]


# -- the backend --------------------------------------------------------------------------------


class OpenCVBackend:
    """:class:`~viva_pipelines.pairs.types.EditBackend` on the CPU with OpenCV.

    ``dilation``: pixels by which :meth:`inpaint` grows the hole, so the object's rim goes too
    and no fill is copied from next to an object in another frame. ``align``: follow the
    camera (pans, zooms; see :func:`estimate_motion`) in the temporal fill; off, the fill
    assumes a still camera. ``inpaint_radius``: neighbourhood of the Telea fill for pixels
    hidden in every frame (1: as good as larger radii on the demo world's photos, and 2-3x
    faster).
    """

    name = "opencv"

    def __init__(self, *, dilation: int = 1, align: bool = True, inpaint_radius: int = 1) -> None:
        self.dilation = dilation
        self.align = align
        self.inpaint_radius = inpaint_radius

    def inpaint(self, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Background in the (dilated) masks: copied from the nearest frame where that point is
        visible, then Telea inpainting for what no frame shows."""
        check_clip(frames, masks)
        holes = dilate_masks(masks, self.dilation)
        if not holes.any():
            return frames.copy()
        if self.align:
            motion = estimate_motion(frames, holes)
        else:
            motion = np.broadcast_to(np.eye(3), (len(frames), 3, 3))
        filled, missing = temporal_fill(frames, holes, motion)
        for t in np.nonzero(missing.any(axis=(1, 2)))[0]:
            filled[t] = cv2.inpaint(
                filled[t], missing[t].astype(np.uint8), self.inpaint_radius, cv2.INPAINT_TELEA
            )
        return filled

    def render_object(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        prompt: str,
        reference: np.ndarray | None = None,
    ) -> np.ndarray:
        """The object fitted into each frame's mask and clipped to it (see
        :func:`paste_into_masks`): the ``reference`` image, its plain background keyed out, when
        given, else the demo-world object the prompt names (see :func:`parse_object`)."""
        check_clip(frames, masks)
        rgba = keyed_rgba(reference) if reference is not None else entry_rgba(parse_object(prompt))
        return paste_into_masks(frames, masks, rgba)

    def restyle(self, frames: np.ndarray, prompt: str) -> np.ndarray:
        """Every look named in ``prompt`` (see :data:`LOOKS`), applied in turn."""
        check_clip(frames)
        names = looks_in(prompt)
        if not names:
            raise ValueError(f"no known look in {prompt!r}; known: {', '.join(LOOKS)}")
        for name in names:
            frames = _LOOKS[name][1](frames)
        return frames
