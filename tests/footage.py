"""Real-codec clips with the variety of real footage, for the fuzz test and the footage battery.

A :class:`ClipSpec` picks a container and codec (the formats cameras, phones, screen recorders
and old archives produce), a geometry, a frame rate, a duration, a pixel format, a display
rotation and a timestamp order; :func:`write_clip` writes it with PyAV. Content is a coloured
rectangle moving over a gradient, and :func:`write_clip` can add its annotation sidecar, so the
clip can also travel through tracking and pair generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from hypothesis import strategies as st

from viva_pipelines.video.annotations import Annotations, sidecar_keys


@dataclass(frozen=True)
class Format:
    container: str
    suffix: str
    codec: str
    pix_fmts: tuple[str, ...]
    #: frame sizes the codec accepts: "even", "any", or a fixed list
    sizes: str | tuple[tuple[int, int], ...] = "even"
    #: frame rates the codec accepts (None: any)
    rates: tuple[Fraction, ...] | None = None
    #: the decoder reorders pictures (B-frames), so "pts_from_dts" really disorders the stamps
    reorders: bool = False
    #: the container stores presentation times for every frame, in any order
    free_stamps: bool = False
    rotation: bool = False


_MPEG_RATES = tuple(Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "50", "60"))
FORMATS = {
    "mp4-h264": Format("mp4", ".mp4", "libx264", ("yuv420p", "yuv444p", "yuvj420p"),
                       reorders=True, rotation=True),
    "mov-mpeg4": Format("mov", ".mov", "mpeg4", ("yuv420p",), rotation=True),
    "mkv-h265": Format("matroska", ".mkv", "libx265", ("yuv420p", "yuv420p10le"),
                       ((64, 64), (160, 90), (90, 160), (66, 34)), reorders=True),
    "mkv-mjpeg": Format("matroska", ".mkv", "mjpeg", ("yuvj420p", "yuvj444p"), "any",
                        free_stamps=True),
    "mkv-ffv1": Format("matroska", ".mkv", "ffv1", ("yuv444p", "yuv420p"), "any",
                       free_stamps=True),
    "webm-vp9": Format("webm", ".webm", "libvpx-vp9", ("yuv420p", "yuv444p")),
    "webm-vp8": Format("webm", ".webm", "libvpx", ("yuv420p",)),
    "avi-mjpeg": Format("avi", ".avi", "mjpeg", ("yuvj420p",), "any"),
    "mpg-mpeg1": Format("mpeg", ".mpg", "mpeg1video", ("yuv420p",), rates=_MPEG_RATES),
    "mpeg-mpeg2": Format("mpeg", ".mpeg", "mpeg2video", ("yuv420p", "yuv422p"),
                         rates=_MPEG_RATES),
    "ts-h264": Format("mpegts", ".ts", "libx264", ("yuv420p",), reorders=True),
    "m2ts-mpeg2": Format("mpegts", ".m2ts", "mpeg2video", ("yuv420p",), rates=_MPEG_RATES),
    "flv-flv1": Format("flv", ".flv", "flv", ("yuv420p",)),
    "wmv-wmv2": Format("asf", ".wmv", "wmv2", ("yuv420p",)),
    "3gp-h263": Format("3gp", ".3gp", "h263", ("yuv420p",), ((128, 96), (176, 144))),
}  # fmt: skip
#: "in_order"; "vfr" (irregular gaps); "pts_from_dts" (a muxer that copied dts into pts);
#: "swapped" (neighbouring frames' stamps exchanged); "duplicate" (one stamp repeated).
TIMESTAMP_ORDERS = ("in_order", "vfr", "pts_from_dts", "swapped", "duplicate")


@dataclass(frozen=True)
class ClipSpec:
    format: str
    width: int
    height: int
    fps: Fraction
    frames: int
    pix_fmt: str
    rotation: int = 0
    timestamps: str = "in_order"
    annotated: bool = False

    @property
    def fmt(self) -> Format:
        return FORMATS[self.format]


@st.composite
def clip_specs(draw: st.DrawFn) -> ClipSpec:
    """Any clip the formats above can hold: random geometry, rate, duration, pixel format,
    rotation and timestamp order (only where the container can carry it)."""
    name = draw(st.sampled_from(sorted(FORMATS)))
    fmt = FORMATS[name]
    if isinstance(fmt.sizes, tuple):
        width, height = draw(st.sampled_from(fmt.sizes))
    else:
        width, height = draw(st.integers(8, 160)), draw(st.integers(8, 120))
        if fmt.sizes == "even":
            width, height = width + width % 2, height + height % 2
    if fmt.rates:
        fps = draw(st.sampled_from(fmt.rates))
    else:
        fps = Fraction(draw(st.integers(1, 240)), draw(st.sampled_from([1, 1001])))
        fps = fps if fps >= 1 else Fraction(1)
    orders = ["in_order", "vfr"]
    orders += ["pts_from_dts"] if fmt.reorders else []
    orders += ["swapped", "duplicate"] if fmt.free_stamps else []
    return ClipSpec(
        format=name,
        width=width,
        height=height,
        fps=fps,
        frames=draw(st.integers(1, 30)),
        pix_fmt=draw(st.sampled_from(fmt.pix_fmts)),
        rotation=draw(st.sampled_from([0, 90, 180, 270])) if fmt.rotation else 0,
        timestamps=draw(st.sampled_from(orders)),
        annotated=draw(st.booleans()),
    )


def clip_frames(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 [T, H, W, 3]`` frames (a gradient with a rectangle moving right) and the
    rectangle's ``bool [T, H, W]`` masks."""
    h, w = spec.height, spec.width
    ys, xs = np.mgrid[0:h, 0:w]
    background = np.stack(
        [xs * 255 // max(w - 1, 1), ys * 255 // max(h - 1, 1), np.full_like(xs, 96)], axis=-1
    ).astype(np.uint8)
    frames = np.repeat(background[None], spec.frames, axis=0)
    masks = np.zeros((spec.frames, h, w), dtype=bool)
    box_w, box_h = max(w // 3, 2), max(h // 3, 2)
    for t in range(spec.frames):
        left = (t * max(w // 12, 1)) % max(w - box_w, 1)
        masks[t, h // 3 : h // 3 + box_h, left : left + box_w] = True
    frames[masks] = (230, 40, 40)
    return frames, masks


def write_clip(path: Path, spec: ClipSpec) -> Path:
    """Write ``spec`` to ``path`` (its suffix should be the format's), plus the annotation
    sidecar when ``spec.annotated``. The sidecar's masks are per written frame and upright.

    Times are counted in frame periods (time base ``1 / fps``): frame ``i`` at ``i``, or at
    irregular gaps of 1-3 periods for ``"vfr"``.
    """
    fmt = spec.fmt
    frames, masks = clip_frames(spec)
    stamps = list(range(spec.frames))
    if spec.timestamps == "vfr":
        gaps = np.random.default_rng(spec.frames).integers(1, 4, size=spec.frames - 1)
        stamps = [0, *np.cumsum(gaps).tolist()]
    order = list(range(spec.frames))  # which frame's stamp each packet of an intra codec gets
    if spec.timestamps == "swapped":
        for i in range(0, spec.frames - 1, 2):
            order[i], order[i + 1] = order[i + 1], order[i]
    elif spec.timestamps == "duplicate" and spec.frames > 2:
        order[2] = order[1]
    with av.open(str(path), mode="w", format=fmt.container) as out:
        stream = out.add_stream(fmt.codec, rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
        if fmt.codec == "libx264":
            stream.options = {"crf": "18", "bf": "3"}
        elif fmt.codec == "libx265":
            stream.options = {"x265-params": "log-level=none:bframes=3"}
        elif fmt.codec == "mpeg4":
            stream.codec_context.max_b_frames = 2
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        packets = []
        for image, stamp in zip(frames, stamps, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=spec.pix_fmt)
            frame.pts, frame.time_base = stamp, 1 / spec.fps
            packets += stream.encode(frame)
        packets += stream.encode()
        for index, packet in enumerate(packets):
            if spec.timestamps == "pts_from_dts":
                packet.pts = packet.dts
            elif spec.timestamps in ("swapped", "duplicate"):  # intra: packet i is frame i
                packet.time_base = 1 / spec.fps
                packet.pts, packet.dts = order[index], min(order[index:])  # dts <= pts, rising
            out.mux(packet)
    if spec.annotated:
        upright = np.rot90(masks, spec.rotation // 90, axes=(1, 2))
        ann = Annotations(
            "a red box over a gradient", [{"id": 1, "label": "red box"}], upright.astype(np.uint8)
        )
        json_bytes, npz_bytes = ann.to_bytes()
        json_key, masks_key = sidecar_keys(str(path))
        Path(json_key).write_bytes(json_bytes)
        Path(masks_key).write_bytes(npz_bytes)
    return path
