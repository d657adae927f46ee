"""Edit a whole video of any length, size and frame rate with a model that edits short clips.

**Time.** The model edits clips of ``geometry.frames`` frames. A video is covered by windows of
that many *consecutive* source frames, each overlapping the previous one by ``overlap`` frames;
every window starts from the same noise (one seed), so the model makes the same choices in
each, and the edits are cross-faded over the overlap with triangular weights. Conditioning a
window on the previous one's last frames would need a model input that VIVA's DiT does not
have; the blend needs none. Every source frame gets exactly one output frame, written at the
source's frame rate.

**Size.** Each frame is brought to the model's resolution the way ingest does (one scale
factor, centre crop); the edited crop is scaled back and put in its place in the source frame,
so the output keeps the source's width and height, and the margins the crop cut away keep the
source's pixels. With ``preserve_unchanged`` (the default), pixels where the model itself
changed nothing (its own edit-vs-source difference at model resolution, thresholded, dilated and
feathered) keep the original full-resolution pixels too, so a model that edits at 64 pixels
gives back a sharp video with the edit in its place rather than the whole crop scaled up; no
external mask is used.

**Memory.** Decoding, editing and encoding stream window by window: at most one window of
source frames (full resolution) is held, whatever the video's length. Audio packets are copied
as they are.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from tqdm.auto import tqdm

from viva_pipelines.config.schema import InferenceSettings
from viva_pipelines.manifests import one_line_reason
from viva_pipelines.model.clips import ClipGeometry
from viva_pipelines.model.pipeline import VivaEditPipeline
from viva_pipelines.model.requests import EditRequestError, check_request
from viva_pipelines.pairs.pixels import changed_pixels
from viva_pipelines.previews import grid
from viva_pipelines.storage import is_storage_outage
from viva_pipelines.video.images import ImageUnreadable, decode_image
from viva_pipelines.video.probe import rotation_degrees

#: Grey levels (0-255, at model resolution) below which the model is taken to have changed
#: nothing, and how far (model pixels) the changed region is grown and then feathered.
CHANGE_THRESHOLD = 12
CHANGE_DILATION = 1
CHANGE_FEATHER = 1.0
#: An edit's sampling and output keywords when none is given: the ``inference.*`` defaults.
DEFAULTS = InferenceSettings.edit_option_defaults()


@dataclass(frozen=True)
class EditedVideo:
    path: Path
    frames: int
    fps: float
    width: int
    height: int
    windows: int
    seconds: float
    has_audio: bool
    #: ``uint8 [H, W, 3]``: source | edit side by side, one row per sampled frame (when asked)
    preview: np.ndarray | None = None


def window_starts(frames: int, size: int, overlap: int) -> list[int]:
    """First frame of each window of ``size`` covering ``frames`` frames, consecutive windows
    sharing ``overlap`` frames; the last window ends at the last frame (it may share more)."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, {size}), got {overlap}")
    if frames <= size:
        return [0]
    step = size - overlap
    starts = list(range(0, frames - size, step))
    return [*starts, frames - size]


def blend_weights(size: int, overlap: int) -> np.ndarray:
    """``float [size]``: a window's weight per frame, rising over its first ``overlap`` frames
    and falling over its last ones (triangular cross-fade), never 0."""
    ramp = np.arange(1, overlap + 1, dtype=np.float64) / (overlap + 1)
    weights = np.ones(size)
    if overlap:
        weights[:overlap] = ramp
        weights[size - overlap :] = np.minimum(weights[size - overlap :], ramp[::-1])
    return weights


def crop_box(width: int, height: int, geometry: ClipGeometry) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the region of a ``width x height`` frame that the model sees
    (the inverse of :meth:`ClipGeometry.fit`'s scale and centre crop)."""
    scale = max(geometry.width / width, geometry.height / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = (new_w - geometry.width) // 2, (new_h - geometry.height) // 2
    x0, y0 = round(left / scale), round(top / scale)
    x1 = min(width, round((left + geometry.width) / scale))
    y1 = min(height, round((top + geometry.height) / scale))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def change_map(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """``float [h, w]`` in [0, 1]: where the model changed its input (model resolution)."""
    changed = changed_pixels(source, edited, CHANGE_THRESHOLD).astype(np.uint8)
    if CHANGE_DILATION:
        kernel = np.ones((2 * CHANGE_DILATION + 1,) * 2, np.uint8)
        changed = cv2.dilate(changed, kernel)
    soft = changed.astype(np.float32)
    if CHANGE_FEATHER:
        soft = cv2.GaussianBlur(soft, (0, 0), CHANGE_FEATHER)
    return np.clip(soft, 0.0, 1.0)


def put_back(
    frame: np.ndarray,
    edited: np.ndarray,
    geometry: ClipGeometry,
    source_small: np.ndarray | None = None,
) -> np.ndarray:
    """The source ``frame`` with the model's ``edited`` crop scaled into its place; with
    ``source_small`` (the model's input), only where the model changed something."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = crop_box(width, height, geometry)
    region = cv2.resize(edited, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    out = frame.copy()
    if source_small is None:
        out[y0:y1, x0:x1] = region
        return out
    alpha = cv2.resize(change_map(source_small, edited), (x1 - x0, y1 - y0))[..., None]
    original = frame[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = (original + alpha * (region.astype(np.float32) - original)).round()
    return out


@dataclass
class _Pending:
    """A source frame read but not yet written, with its blended edit so far."""

    frame: np.ndarray  # uint8 [H, W, 3], full resolution
    small: np.ndarray  # uint8 [h, w, 3], the model's view of it
    total: np.ndarray | float = 0.0  # sum of weight * edited frame
    weight: float = 0.0


class _AudioCopy:
    """Copies the source's audio packets into the output as they are demuxed; packets that
    come before the video stream exists (the output's header is written at the first mux)
    wait for :meth:`open`."""

    def __init__(self, sink, source_stream) -> None:
        self.sink = sink
        self.stream = sink.add_stream_from_template(source_stream)
        self.waiting: list[av.Packet] | None = []

    def open(self) -> None:
        for packet in self.waiting or []:
            self.sink.mux(packet)
        self.waiting = None

    def __call__(self, packet: av.Packet) -> None:
        if packet.dts is None:
            return
        packet.stream = self.stream
        if self.waiting is None:
            self.sink.mux(packet)
        else:
            self.waiting.append(packet)


def _decoded(container, audio: _AudioCopy | None, name: object) -> Iterator[np.ndarray]:
    """Upright RGB frames of the first video stream; audio packets go to ``audio``. A stream
    that stops decoding (a truncated or corrupt file) is an :class:`EditRequestError` naming
    the video ``name`` and how far it got."""
    video = container.streams.video[0]
    source_audio = container.streams.audio[0] if audio is not None else None
    streams = [video] + ([source_audio] if source_audio is not None else [])
    decoded = 0
    try:
        for packet in container.demux(*streams):
            if packet.stream is source_audio:
                audio(packet)
                continue
            for frame in packet.decode():
                rgb = frame.to_ndarray(format="rgb24")
                decoded += 1
                yield np.ascontiguousarray(np.rot90(rgb, rotation_degrees(frame) // 90))
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise EditRequestError(
            f"video {name}: cannot be decoded after frame {decoded} ({reason})"
        ) from None


def edit_whole_video(
    pipeline: VivaEditPipeline,
    video: str | os.PathLike,
    instruction: str,
    out: str | os.PathLike,
    *,
    reference: np.ndarray | None = None,
    overlap: int | None = None,
    preserve_unchanged: bool = DEFAULTS["preserve_unchanged"],
    crf: int = DEFAULTS["crf"],
    seed: int = DEFAULTS["seed"],
    num_steps: int | None = DEFAULTS["num_steps"],
    guidance_scale: float | None = DEFAULTS["guidance_scale"],
    preview_frames: int = 0,
    window_batch: int = DEFAULTS["window_batch"],
    progress: bool = True,
) -> EditedVideo:
    """Edit every frame of ``video`` and write ``out`` (H.264 MP4, the source's size and frame
    rate, its audio copied). Written to a temporary name first and renamed when complete.
    ``preview_frames``: that many frames, evenly spread, come back side by side with their
    sources in :attr:`EditedVideo.preview` (kept as they stream past, at preview size).
    ``window_batch``: windows edited in one model call (a GPU's throughput; memory holds that
    many windows of full-size frames, plus one window)."""
    if window_batch < 1:
        raise ValueError(f"window_batch must be >= 1, got {window_batch}")
    started = time.perf_counter()
    geometry = pipeline.spec.geometry
    size = geometry.frames
    overlap = size // 2 if overlap is None else overlap
    weights = blend_weights(size, overlap)
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial.mp4")
    try:
        with av.open(os.fspath(video)) as source, av.open(os.fspath(partial), "w") as sink:
            stream = source.streams.video[0]
            total = stream.frames or 0
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            audio = _AudioCopy(sink, source.streams.audio[0]) if source.streams.audio else None
            frames = _decoded(source, audio, video)
            result = _edit_stream(
                pipeline,
                frames,
                instruction,
                sink,
                rate,
                audio,
                reference=reference,
                weights=weights,
                overlap=overlap,
                preserve_unchanged=preserve_unchanged,
                crf=crf,
                seed=seed,
                num_steps=num_steps,
                guidance_scale=guidance_scale,
                window_batch=window_batch,
                previews=_Previews(preview_frames, total),
                bar=tqdm(total=total or None, unit="frame", disable=not progress, desc="edit"),
            )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    count, width, height, windows, preview = result
    return EditedVideo(
        out,
        count,
        float(rate),
        width,
        height,
        windows,
        time.perf_counter() - started,
        audio is not None,
        preview,
    )


class _Previews:
    """Source and edited frames at ``count`` evenly spread indices of a ``total``-frame video
    (the first ``count`` when the container does not say how many), kept small."""

    HEIGHT = 120

    def __init__(self, count: int, total: int) -> None:
        if count and total:
            self.wanted = {round(i * (total - 1) / max(count - 1, 1)) for i in range(count)}
        else:
            self.wanted = set(range(count))
        self.rows: list[list[np.ndarray]] = []

    def offer(self, index: int, source: np.ndarray, edited: np.ndarray) -> None:
        if index in self.wanted:
            self.rows.append([_small(source, self.HEIGHT), _small(edited, self.HEIGHT)])

    def image(self) -> np.ndarray | None:
        return grid(self.rows, self.HEIGHT) if self.rows else None


def _small(frame: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(frame.shape[1] * height / frame.shape[0]))
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def plan_windows(
    frames: int, exhausted: bool, size: int, step: int, batch: int, written: int
) -> tuple[list[tuple[int, int]], int]:
    """The next windows to edit together, over ``frames`` frames read and not yet written
    (``exhausted``: no more will come; ``written``: earlier frames still at hand, at most
    ``size - 1``): up to ``batch`` of ``(start, first_open)``, frame indices relative to the
    first unwritten frame, and how many frames are final once they are edited.

    Windows advance by ``step``; each is edited while at least one frame follows it, so the
    last one can end exactly at the video's end (``start`` < 0: it reaches back into written
    frames; a video shorter than a window is padded with its last frame). A window adds its
    edit only to frames from ``first_open`` on, those not yet final when it comes in turn, so
    a batch of windows gives the same video as editing them one at a time.
    """
    windows: list[tuple[int, int]] = []
    position = 0
    while len(windows) < batch and position < frames:
        remaining = frames - position
        if not exhausted and remaining <= size:
            break  # read on first: a later window may still cover these frames
        last = exhausted and remaining <= size
        start = position if remaining >= size else max(frames - size, -written)
        windows.append((start, position))
        position = frames if last else position + step
    return windows, position


def _edit_stream(
    pipeline: VivaEditPipeline,
    frames: Iterator[np.ndarray],
    instruction: str,
    sink,
    rate: Fraction,
    audio: _AudioCopy | None,
    *,
    reference: np.ndarray | None,
    weights: np.ndarray,
    overlap: int,
    preserve_unchanged: bool,
    crf: int,
    seed: int,
    num_steps: int | None,
    guidance_scale: float | None,
    window_batch: int,
    previews: _Previews,
    bar: tqdm,
) -> tuple[int, int, int, int, np.ndarray | None]:
    """Window by window: edit, cross-fade, put back at full size, encode. Returns (frames
    written, width, height, windows, preview)."""
    geometry = pipeline.spec.geometry
    size = len(weights)
    first = next(frames, None)
    if first is None:
        raise ValueError("the video has no decodable frames")
    height, width = first.shape[:2]
    encoder = sink.add_stream("libx264", rate=rate)
    encoder.width, encoder.height = width, height
    # yuv420p (plays everywhere) needs even sides; odd ones keep full chroma instead
    encoder.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    encoder.options = {"crf": str(crf)}
    if audio is not None:
        audio.open()
    prepared = pipeline.prepare(instruction, first, reference)
    sampling = {"num_steps": num_steps, "guidance_scale": guidance_scale, "seed": seed}

    written_small: deque[np.ndarray] = deque(maxlen=size)  # model views of written frames
    pending: deque[_Pending] = deque()  # frames read but not yet written, in order
    frames = itertools.chain([first], frames)
    step = size - overlap
    look_ahead = (window_batch - 1) * step + size + 1  # frames for a batch, plus one
    written = windows = 0
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        while len(pending) < look_ahead and not exhausted:
            frame = next(frames, None)
            if frame is None:
                exhausted = True
                return
            pending.append(_Pending(frame, geometry.fit(frame)))

    def emit(count: int) -> None:
        nonlocal written
        for _ in range(count):
            entry = pending.popleft()
            edited = (entry.total / entry.weight).round().clip(0, 255).astype(np.uint8)
            small = entry.small if preserve_unchanged else None
            full = put_back(entry.frame, edited, geometry, small)
            previews.offer(written, entry.frame, full)
            for packet in encoder.encode(av.VideoFrame.from_ndarray(full, format="rgb24")):
                sink.mux(packet)
            written_small.append(entry.small)
            written += 1
            bar.update(1)

    fill()
    while pending:
        plan, done = plan_windows(
            len(pending), exhausted, size, step, window_batch, len(written_small)
        )
        views = [*written_small, *(entry.small for entry in pending)]
        shift = len(written_small)  # pending frame i is views[shift + i]
        clips = np.stack(
            [
                [views[shift + min(start + i, len(pending) - 1)] for i in range(size)]
                for start, _ in plan
            ]
        )
        edited = pipeline.edit_clips(clips, prepared, **sampling)
        windows += len(plan)
        for (start, first_open), clip in zip(plan, edited, strict=True):
            for index in range(max(start, first_open), min(start + size, len(pending))):
                entry = pending[index]
                entry.total = entry.total + weights[index - start] * clip[index - start]
                entry.weight += weights[index - start]
        emit(done)
        fill()
    for packet in encoder.encode():
        sink.mux(packet)
    bar.close()
    return written, width, height, windows, previews.image()


def edit_video(
    model: str | os.PathLike | VivaEditPipeline,
    video: str | os.PathLike,
    instruction: str,
    out: str | os.PathLike,
    *,
    lora: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    overwrite: bool = False,
    **options,
) -> EditedVideo:
    """Check the request, load the model (a directory or a loaded pipeline, plus an Edit-GRPO
    LoRA) and edit the whole video (:func:`edit_whole_video`; ``options`` are its keywords)."""
    check_request(video, instruction, out, reference, overwrite=overwrite)
    ref = None
    if reference is not None:
        try:
            ref = decode_image(Path(reference))
        except ImageUnreadable as exc:
            raise EditRequestError(f"reference {reference}: not a readable image ({exc})") from None
    pipeline = (
        VivaEditPipeline.from_pretrained(model) if isinstance(model, (str, os.PathLike)) else model
    )
    if lora is not None:
        pipeline.load_lora(lora)
    return edit_whole_video(pipeline, video, instruction, out, reference=ref, **options)


@dataclass(frozen=True)
class EditRequest:
    """One line of a requests file: ``{"video", "instruction", "reference"?, "out"}``, paths
    as the file gives them (where they lead is the caller's :data:`Placement`)."""

    line: int
    video: str
    instruction: str
    out: str
    reference: str | None = None


REQUEST_KEYS = ("video", "instruction", "reference", "out")


def parse_request(line: int, text: str) -> EditRequest:
    """Line ``line`` of a requests file, or an :class:`EditRequestError` saying what is wrong
    with it (not JSON, not an object, a missing or unknown key, a value that is not text)."""
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EditRequestError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(request, dict):
        raise EditRequestError("a request must be a JSON object")
    unknown = sorted(set(request) - set(REQUEST_KEYS))
    if unknown:
        raise EditRequestError(
            f"unknown key {', '.join(unknown)} (known: {', '.join(REQUEST_KEYS)})"
        )
    missing = [k for k in ("video", "instruction", "out") if not request.get(k)]
    if missing:
        raise EditRequestError(f"missing {', '.join(missing)}")
    wrong = [k for k, v in request.items() if v is not None and not isinstance(v, str)]
    if wrong:
        raise EditRequestError(f"{', '.join(wrong)} must be text")
    return EditRequest(
        line,
        request["video"],
        request["instruction"],
        request["out"],
        request.get("reference") or None,
    )


@dataclass
class Placed:
    """Where one request's files are on this machine; ``details`` (e.g. where the output was
    uploaded) go into its result."""

    video: Path
    out: Path
    reference: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


#: ``placement(request)``: a context manager giving the request's local files. It may fetch
#: the inputs first and deliver the output when the block ends without error (then filling
#: ``details``); what it raises makes the request a failure, except a storage outage.
Placement = Callable[[EditRequest], AbstractContextManager[Placed]]


def beside(folder: str | os.PathLike) -> Placement:
    """The placement of a local requests file: paths relative to ``folder``."""
    folder = Path(folder)

    @contextmanager
    def place(request: EditRequest) -> Iterator[Placed]:
        reference = folder / request.reference if request.reference else None
        yield Placed(folder / request.video, folder / request.out, reference)

    return place


def outcome_line(result: dict[str, Any]) -> str:
    """One batch result as a line of progress: ``ok: out.mp4: 48 frames in 6.1 s`` or
    ``failed: line 3: <reason>``."""
    where = result.get("out") or f"line {result['line']}"
    if result["status"] == "ok":
        return f"ok: {where}: {result['frames']} frames in {result['seconds']} s"
    return f"{result['status']}: {where}: {result['reason']}"


def edit_batch(
    load: Callable[[], VivaEditPipeline],
    lines: Iterable[str],
    place: Placement,
    *,
    overwrite: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Edit every request of a requests file's ``lines`` (:func:`parse_request`), loading the
    model once (``load()``, at the first valid request) and placing files with ``place``. A
    bad line, a bad request or a failed edit is a ``failed`` result with its one-line reason,
    and the rest go on; a storage outage is raised (the batch is retried, not its inputs
    blamed). ``options``: :func:`edit_whole_video`'s keywords (``preview_frames`` included)."""
    results: list[dict[str, Any]] = []
    pipeline: VivaEditPipeline | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        result: dict[str, Any] = {"line": number, "status": "failed"}
        try:
            request = parse_request(number, line)
            result.update(
                video=request.video,
                instruction=request.instruction,
                reference=request.reference,
                out=request.out,
            )
            with place(request) as placed:
                check_request(
                    placed.video,
                    request.instruction,
                    placed.out,
                    placed.reference,
                    overwrite=overwrite,
                )
                pipeline = pipeline or load()
                edited = edit_video(
                    pipeline,
                    placed.video,
                    request.instruction,
                    placed.out,
                    reference=placed.reference,
                    overwrite=overwrite,
                    **options,
                )
            result.update(
                status="ok",
                frames=edited.frames,
                fps=edited.fps,
                width=edited.width,
                height=edited.height,
                seconds=round(edited.seconds, 1),
                **placed.details,
            )
            if edited.preview is not None:
                result["preview"] = edited.preview
        except Exception as exc:  # one bad request must not stop the batch
            if is_storage_outage(exc):
                raise
            result["reason"] = one_line_reason(exc)
        results.append(result)
        if on_result:
            on_result(result)
    return results
