"""Probe and validate one user-supplied video file.

Users upload anything: empty files, interrupted uploads, images or audio renamed ``.mp4``,
files whose headers lie. Ingestion must turn each of those into *one short sentence* saying
what is wrong (:class:`VideoRejected`) instead of a traceback from inside PyAV, and it must do so
without letting a hostile header make it allocate gigabytes.

The checks run cheapest first: file size; container and streams (opened with stream-info
decoding disabled, see :func:`_open`); the declared frame size, frame rate and duration; then a
decode of the frames, which is the only way to know how many there really are, whether their
timestamps are sane and whether the bitstream is intact.

Timestamps are repaired where an order can be recovered (:class:`_PresentationOrder`): files
muxed with packet pts = dts, or with frames stamped out of order, are common in real footage and
play fine everywhere, so they are put in presentation order and the repair is recorded in
:attr:`VideoProbe.timestamp_repair`; only disorder deeper than a decoder's reorder window is
rejected.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.codec.context import ThreadType
from av.container import InputContainer
from av.stream import Disposition
from av.video.stream import VideoStream

from viva_pipelines.config.schema import LimitsSettings

#: libavformat demuxers that read single still images (``png_pipe``, ``jpeg_pipe``, ...).
_STILL_IMAGE_FORMATS = ("image2",)
_STILL_IMAGE_SUFFIX = "_pipe"
#: Pts deltas further than this fraction from the median make a stream variable-frame-rate
#: (Matroska's millisecond timestamps put ±6 % jitter on a 60 fps stream; that is still CFR).
_VFR_TOLERANCE = 0.1
_BROKEN_MP4 = "corrupt or truncated MP4/MOV file: its index (moov box) is missing or unreadable"
#: Decoded frames held back to put disordered timestamps in order. H.264 allows up to 16
#: reordered pictures; real files (B-frame pyramids) use 2-4. Held frames are decoded pictures,
#: so the window is kept small: 8 frames of the largest accepted size are ~200 MB.
_REORDER_WINDOW = 8
#: Frame period (as a rate) given to frames without a timestamp in a stream that declares no
#: frame rate either; only raw elementary streams of unusual codecs need it.
_FALLBACK_FPS = 25.0


#: The limits used when a caller passes none.
DEFAULT_LIMITS = LimitsSettings()


class VideoRejected(Exception):
    """A file that cannot be ingested; ``reason`` is a short sentence for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VideoProbe:
    """What a video file really holds, measured by decoding it.

    ``width``/``height`` are the stored (decoded) picture size; ``rotation`` is the display
    matrix's counter-clockwise rotation in degrees (0, 90, 180 or 270) that turns stored frames
    upright. ``fps`` is the container's declared average rate, or, where it declares none
    (variable-rate ASF/WMV, some FLV), the rate of the decoded timestamps; ``frame_count``,
    ``duration_s`` and ``variable_frame_rate`` come from the decoded timestamps.
    """

    container: str
    codec: str
    width: int
    height: int
    rotation: int
    fps: float
    frame_count: int
    duration_s: float
    has_audio: bool
    variable_frame_rate: bool
    bytes: int
    #: What was done to the timestamps to put the frames in presentation order, e.g.
    #: "6 frames re-timed (timestamps out of order), 1 duplicate timestamp dropped"; None when
    #: they were fine as stored.
    timestamp_repair: str | None = None

    @property
    def display_width(self) -> int:
        """Width of the upright frames (after applying ``rotation``)."""
        return self.height if self.rotation in (90, 270) else self.width

    @property
    def display_height(self) -> int:
        """Height of the upright frames (after applying ``rotation``)."""
        return self.width if self.rotation in (90, 270) else self.height

    def to_dict(self) -> dict[str, Any]:
        """Plain Python scalars, one Parquet row."""
        return dataclasses.asdict(self)


#: ``on_frame(index, time_s, frame) -> done``: see :func:`scan_video`.
FrameCallback = Callable[[int, float, av.VideoFrame], bool]


def probe_video(path: str | os.PathLike, limits: LimitsSettings = DEFAULT_LIMITS) -> VideoProbe:
    """Validate ``path`` and describe it, decoding every frame (pictures are not converted).

    Raises :class:`VideoRejected` for anything ingestion cannot use.
    """
    return scan_video(path, limits)


def scan_video(
    path: str | os.PathLike,
    limits: LimitsSettings = DEFAULT_LIMITS,
    on_frame: FrameCallback | None = None,
) -> VideoProbe:
    """The single pass behind :func:`probe_video` and ``decode_normalised``.

    ``on_frame(index, time_s, frame)`` sees each decoded frame in presentation order, with its
    time in seconds from the first frame. When it returns True it needs no more pictures: the
    rest of the file is then only *demuxed*, its packets counted and timed, so frame count,
    duration and frame-rate regularity still describe the whole file while the (costly) decoding
    stops. That tail is checked for truncation (libavformat flags short packets) but not for
    bitstream corruption, which only decoding would reveal.
    """
    size = _file_size(path)
    if size == 0:
        raise VideoRejected("empty file (0 bytes)")
    max_bytes = int(limits.max_file_mb * 2**20)
    if size > max_bytes:
        raise VideoRejected(f"file too large ({_size_text(size)} > limit {_size_text(max_bytes)})")
    with _open(path) as container:
        stream = _video_stream(container, path)
        fps = _check_header(container, stream, limits)
        return _decode(container, stream, fps, size, limits, on_frame)


def _file_size(path: str | os.PathLike) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise VideoRejected(f"cannot read file ({exc.strerror or exc})") from exc


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _libav_message(exc: Exception) -> str:
    """The short libav sentence of an error, e.g. "Invalid data found when processing input"."""
    return getattr(exc, "strerror", None) or str(exc)


def _open(path: str | os.PathLike) -> InputContainer:
    """Open the container without decoding any picture.

    ``avformat_find_stream_info`` normally decodes the first frame(s) of each stream to fill
    in stream parameters, so a file declaring 10000x10000 would allocate hundreds of MB before
    we could look at its header. ``skip_frame=all`` makes those probe decodes no-ops; the
    declared size still comes from the container and the codec parsers. (Formats that create
    their streams only while probing, such as MPEG-TS, receive no options, so this protection
    does not reach them.) Metadata with invalid UTF-8 is replaced, not raised.
    """
    try:
        return av.open(os.fspath(path), options={"skip_frame": "all"}, metadata_errors="replace")
    except (av.FFmpegError, OSError) as exc:
        if _is_mp4(path):
            raise VideoRejected(f"{_BROKEN_MP4} ({_libav_message(exc)})") from exc
        raise VideoRejected(
            f"not a video: unrecognised file format ({_libav_message(exc)})"
        ) from exc


def _is_mp4(path: str | os.PathLike) -> bool:
    """Whether the file starts like an MP4/MOV (ISO-BMFF ``ftyp`` box), whatever else is wrong.

    An upload cut short loses the index (``moov`` box), which MP4 writers put at the end by
    default; libavformat then says only "invalid data" or finds no usable stream.
    """
    try:
        with open(path, "rb") as handle:
            return handle.read(8)[4:] == b"ftyp"
    except OSError:
        return False


def _video_stream(container: InputContainer, path: str | os.PathLike) -> VideoStream:
    """The first real video stream; cover art (an attached picture) does not count."""
    name = container.format.name
    if name in _STILL_IMAGE_FORMATS or name.endswith(_STILL_IMAGE_SUFFIX):
        raise VideoRejected(f"not a video: the file is a still image ({name})")
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        if not container.streams.audio and _is_mp4(path):
            raise VideoRejected(_BROKEN_MP4)
        kinds = sorted("cover image" if s.type == "video" else s.type for s in container.streams)
        found = f"found only: {', '.join(dict.fromkeys(kinds))}" if kinds else "no streams at all"
        raise VideoRejected(f"no video stream ({found})")
    stream = videos[0]
    if stream.codec_context is None:
        raise VideoRejected("unsupported video codec (no decoder available)")
    return stream


def _check_header(
    container: InputContainer, stream: VideoStream, limits: LimitsSettings
) -> float | None:
    """Reject on what the headers declare, before decoding anything; returns the declared
    average frame rate, or None when the container gives none (then the decoded timestamps
    decide: see :func:`_decode`)."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        raise VideoRejected(
            f"frame size too large ({width}x{height} declared = {width * height / 1e6:.1f} MP"
            f" > limit {limits.max_pixels / 1e6:.1f} MP)"
        )
    if container.duration is not None:
        declared = container.duration / av.time_base
    elif stream.duration is not None and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    else:
        declared = 0.0
    if declared > limits.max_duration_s:
        raise VideoRejected(_too_long(f"{declared:.1f} s declared", limits))
    rate = stream.average_rate
    return float(rate) if rate and rate > 0 else None


def _too_long(what: str, limits: LimitsSettings) -> str:
    return f"too long ({what} > limit {limits.max_duration_s:g} s)"


class _Clock:
    """Presentation times in seconds, with a fallback for frames and packets without pts.

    Raw elementary streams carry no timestamps; their frames are placed one frame duration
    (from the codec, else ``1 / fps``) after the latest one.
    """

    def __init__(self, time_base: Fraction | None, fps: float) -> None:
        self.time_base = time_base or Fraction(0)
        self.default_step = 1.0 / fps
        self.next = 0.0

    def time(self, pts: int | None, duration: int | None) -> float:
        t = self.next if pts is None else float(pts * self.time_base)
        step = float(duration * self.time_base) if duration else self.default_step
        self.next = max(self.next, t + step)
        return t


class _PresentationOrder:
    """Turns decoded frames with possibly disordered timestamps into a strictly increasing
    timeline, holding back at most ``window`` frames.

    Two kinds of stream need two repairs. A decoder that reorders pictures (B-frames) already
    emits them in presentation order, so when their timestamps are out of order the *stamps* are
    wrong (typically a muxer that copied dts into pts): the frames keep their order and take the
    sorted timestamps. A decoder that does not reorder emits frames in file order, so the
    timestamps are the only order there is: the frames are sorted by them. In both cases a
    timestamp equal to the previous one marks a duplicate, which is dropped, and a timestamp
    earlier than one already emitted means the disorder is deeper than the window: no order
    can be recovered and the file is rejected.
    """

    def __init__(self, window: int, decoder_reorders: Callable[[], bool]) -> None:
        self.window = window
        self.decoder_reorders = decoder_reorders
        self.frames: deque[tuple[float, av.VideoFrame]] = deque()  # in decoder output order
        self.times: list[float] = []  # heap of the held frames' timestamps
        self.last: float | None = None  # timestamp of the latest emitted frame
        self.count = 0  # frames pushed
        self.retimed = 0
        self.moved = 0
        self.duplicates = 0

    def push(self, t: float, frame: av.VideoFrame) -> list[tuple[float, av.VideoFrame]]:
        """Take the next decoded frame; returns the frames now ready, in presentation order."""
        self.count += 1
        if self.last is not None and t < self.last:
            raise VideoRejected(
                f"corrupt timestamps: frame {self.count - 1} is stamped {self.last - t:.3f} s"
                f" before a frame already placed, deeper than the {self.window} frames a decoder"
                " may reorder; no presentation order can be recovered"
            )
        self.frames.append((t, frame))
        heapq.heappush(self.times, t)
        ready = []
        while len(self.frames) > self.window:
            ready += self._emit()
        return ready

    def flush(self) -> list[tuple[float, av.VideoFrame]]:
        """The frames still held, in presentation order (at the end of the stream)."""
        ready = []
        while self.frames:
            ready += self._emit()
        return ready

    def _emit(self) -> list[tuple[float, av.VideoFrame]]:
        t = heapq.heappop(self.times)
        if self.decoder_reorders():
            stamped, frame = self.frames.popleft()
            self.retimed += stamped != t
        else:
            position = next(i for i, (stamped, _) in enumerate(self.frames) if stamped == t)
            _, frame = self.frames[position]
            del self.frames[position]
            self.moved += position > 0
        if self.last is not None and t <= self.last:
            self.duplicates += 1
            return []
        self.last = t
        return [(t, frame)]

    def repair(self, duplicates: int) -> str | None:
        """One line for the manifest saying what was repaired, or None; ``duplicates`` counts
        every frame dropped for a repeated timestamp, here and in the demuxed tail."""
        done = []
        if self.retimed:
            done.append(f"{_frames(self.retimed)} re-timed (timestamps out of presentation order)")
        if self.moved:
            done.append(f"{_frames(self.moved)} moved into timestamp order")
        if duplicates:
            done.append(f"{_frames(duplicates)} with a duplicate timestamp dropped")
        return ", ".join(done) or None


def _frames(count: int) -> str:
    return f"{count} frame{'s' * (count != 1)}"


def _decode(
    container: InputContainer,
    stream: VideoStream,
    fps: float | None,
    size: int,
    limits: LimitsSettings,
    on_frame: FrameCallback | None,
) -> VideoProbe:
    """Decode (then, once ``on_frame`` is done, demux) the stream and measure it.

    A packet that libavformat flags as corrupt (cut short by the end of the file, or damaged
    in a container with checksums) rejects the file even if the decoder could conceal it:
    ingestion prefers a clear rejection over frames with smeared blocks.
    """
    codec = stream.codec_context
    # Defence in depth: the decoder refuses pictures over the limit even if the stream switches
    # to a larger size after its (checked) header.
    codec.options = {"max_pixels": str(limits.max_pixels)}
    codec.thread_type = ThreadType.AUTO
    clock = _Clock(stream.time_base, fps or _FALLBACK_FPS)
    order = _PresentationOrder(_REORDER_WINDOW, lambda: bool(codec.has_b_frames))
    times: list[float] = []  # seconds from the first frame
    first: tuple[int, int, int] | None = None  # width, height, rotation of the first frame
    t0 = 0.0
    decoding = True

    def record(t: float) -> None:
        if t - t0 > limits.max_duration_s:
            raise VideoRejected(_too_long(f"a frame at {t - t0:.1f} s", limits))
        times.append(t - t0)

    def place(ready: list[tuple[float, av.VideoFrame]]) -> None:
        """Record frames that left the reorder window; show them to ``on_frame`` while it
        still wants pictures."""
        nonlocal first, t0, decoding
        for t, frame in ready:
            if first is None:
                first, t0 = (frame.width, frame.height, rotation_degrees(frame)), t
            record(t)
            if decoding and on_frame and on_frame(len(times) - 1, t - t0, frame):
                decoding = False

    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                raise VideoRejected(
                    f"corrupt or truncated stream: incomplete or damaged packet after"
                    f" {len(times)} frames"
                )
            if not decoding:  # counting only: skip the end-of-stream marker and pre-roll
                if packet.size and not packet.is_discard:
                    record(clock.time(packet.pts, packet.duration))
                continue
            for frame in stream.decode(packet):
                place(order.push(clock.time(frame.pts, frame.duration), frame))
            if not decoding and packet.size:  # (a size-0 packet has flushed the decoder already)
                # frames still held back or inside the decoder belong to the count
                place(order.flush())
                for frame in stream.decode(None):
                    record(clock.time(frame.pts, frame.duration))
        place(order.flush())
    except (av.FFmpegError, OSError) as exc:
        raise VideoRejected(
            f"corrupt or truncated stream: decoding failed after {len(times)} frames"
            f" ({_libav_message(exc)})"
        ) from exc

    timeline = np.unique(np.asarray(times))  # sorted; the demuxed tail may repeat or disorder
    duplicates = order.duplicates + len(times) - timeline.size
    if first is None or timeline.size < limits.min_frames:
        if duplicates:
            raise VideoRejected(
                f"{'corrupt timestamps' if fps else 'frame rate is 0 or unknown'}:"
                f" {timeline.size + duplicates} frames carry only {timeline.size} distinct"
                f" presentation time{'s' * (timeline.size != 1)} (at least {limits.min_frames}"
                " needed)"
            )
        raise VideoRejected(
            f"too few frames ({timeline.size} decoded, at least {limits.min_frames} needed)"
        )
    deltas = np.diff(timeline)
    step = float(np.median(deltas)) if deltas.size else 1.0 / (fps or _FALLBACK_FPS)
    fps = fps or 1.0 / step
    duration = float(timeline[-1] - timeline[0]) + step
    if duration > limits.max_duration_s:
        raise VideoRejected(_too_long(f"{duration:.1f} s decoded", limits))
    jitter = max(_VFR_TOLERANCE * step, float(clock.time_base))
    return VideoProbe(
        container=container.format.name,
        codec=codec.name,
        width=first[0],
        height=first[1],
        rotation=first[2],
        fps=fps,
        frame_count=int(timeline.size),
        duration_s=round(duration, 6),
        has_audio=bool(container.streams.audio),
        variable_frame_rate=bool(np.any(np.abs(deltas - step) > jitter)),
        bytes=size,
        timestamp_repair=order.repair(duplicates),
    )


def rotation_degrees(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation of a decoded frame: 0, 90, 180 or 270.

    libavcodec attaches the container's display matrix (MP4/MOV track matrix, Matroska
    projection) to every decoded frame as side data; PyAV reads its rotation as
    ``frame.rotation`` in [-180, 180]. Angles that are not multiples of 90 are rounded to the
    nearest quarter turn, and mirroring in the matrix is ignored (phones do not write it).
    """
    return (round(frame.rotation / 90) % 4) * 90
