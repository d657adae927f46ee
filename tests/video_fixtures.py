"""Makers of good and deliberately broken video files for the probe/normalise tests.

Every function writes one small file (a few kB, well under a second to make) and returns its
path. The broken files reproduce what users really upload: empty files, cut-off uploads, images
or audio renamed ``.mp4``, files whose headers lie about their size or frame rate, and so on.

Frames of :func:`good_video` are solid grey with a level that encodes the frame index
(:func:`index_level`), so a test can tell from the pixels which source frame it is looking at.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from viva_pipelines.video.io import write_video

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def index_level(index: int) -> int:
    """Grey level of source frame ``index``: 6 apart, far more than H.264's error on flat grey."""
    if not 0 <= index < 38:
        raise ValueError(f"frame index {index} has no distinct grey level (0..37)")
    return 16 + 6 * index


def level_index(level: float) -> int:
    """Inverse of :func:`index_level` for a decoded (slightly noisy) grey level."""
    return round((float(level) - 16) / 6)


def indexed_frames(count: int, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [count, H, W, 3]`` solid grey frames, frame ``i`` at ``index_level(i)``."""
    width, height = size
    levels = np.array([index_level(i) for i in range(count)], dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()


def halves_frame(size: tuple[int, int]) -> np.ndarray:
    """``uint8 [H, W, 3]``: left half red, right half blue (shows flips, rotations, crops)."""
    width, height = size
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:, : width // 2] = RED
    frame[:, width // 2 :] = BLUE
    return frame


def good_video(
    path: Path, frames: int = 10, size: tuple[int, int] = (64, 48), fps: float = 10.0
) -> Path:
    """A clean constant-rate H.264 MP4 of :func:`indexed_frames`."""
    write_video(path, indexed_frames(frames, size), fps)
    return path


def single_frame(directory: Path) -> Path:
    """A valid MP4 holding one frame: too short to be a video clip."""
    return good_video(directory / "single_frame.mp4", frames=1)


def zero_byte(directory: Path) -> Path:
    """An empty ``.mp4`` (an upload that never wrote a byte)."""
    path = directory / "zero_byte.mp4"
    path.write_bytes(b"")
    return path


def _faststart_video(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """An MP4 with the index (moov) *before* the media data, as streaming encoders write it.

    Noise frames make the packets large and evenly spread, so a cut lands inside the stream.
    """
    width, height = size
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        stream.options = {"crf": "12"}
        for _ in range(frames):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def truncated(directory: Path, *, faststart: bool = True) -> Path:
    """A video cut to 60 % of its bytes (an interrupted upload).

    With ``faststart`` the index survives and decoding fails part-way through the stream; without
    it the index (written last by default) is lost and the file cannot even be opened.
    """
    name = "truncated_faststart.mp4" if faststart else "truncated_moov_lost.mp4"
    path = directory / name
    if faststart:
        _faststart_video(path, frames=20, size=(64, 64))
    else:
        good_video(path, frames=20)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def corrupt_middle(directory: Path) -> Path:
    """A complete MP4 whose media data has 2 kB of random garbage in the middle."""
    path = _faststart_video(directory / "corrupt_middle.mp4", frames=20, size=(64, 64))
    data = bytearray(path.read_bytes())
    start = data.index(b"mdat")
    middle = start + (len(data) - start) // 3
    data[middle : middle + 2048] = np.random.default_rng(1).bytes(2048)
    path.write_bytes(bytes(data))
    return path


def wrong_container(directory: Path, kind: str = "png") -> Path:
    """Bytes that are not a video, named ``.mp4``: a PNG image or plain text."""
    path = directory / f"{kind}_renamed.mp4"
    if kind == "png":
        ok, encoded = cv2.imencode(".png", np.zeros((20, 20, 3), dtype=np.uint8))
        assert ok
        path.write_bytes(encoded.tobytes())
    elif kind == "text":
        path.write_text("this is a text file, not a video\n" * 20)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return path


def audio_only(directory: Path) -> Path:
    """An AAC-only MP4 audio file (``.m4a``): one second of a 440 Hz tone."""
    path = directory / "audio_only.m4a"
    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            tone.astype(np.float32)[None], format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _timed_video(path: Path, times_ms: Sequence[int]) -> Path:
    """An MP4 of :func:`indexed_frames` shown at the times ``times_ms`` (milliseconds)."""
    frames = indexed_frames(len(times_ms), (32, 32))
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.thread_count = 1
        stream.options = {"crf": "12"}
        for image, time_ms in zip(frames, times_ms, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = time_ms, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def variable_frame_rate(directory: Path, times_ms: Sequence[int]) -> Path:
    """An MP4 of :func:`indexed_frames` shown at the irregular times ``times_ms`` (milliseconds)."""
    return _timed_video(directory / "variable_frame_rate.mp4", times_ms)


def zero_fps(directory: Path) -> Path:
    """An MP4 whose sample table gives every frame a duration of 0 (a broken muxer's output).

    All frames then share timestamp 0 and libavformat derives no frame rate: ``average_rate``
    is ``None``. Two easier routes do not get there: a raw ``.h264`` stream (the raw demuxer
    assumes 25 fps), and the same patch on a :func:`good_video` file (libavformat still reports
    10 fps there, apparently from the rate x264 writes into the H.264 headers; written with a
    1 ms encoder time base, as here, that fallback does not kick in).
    """
    path = _timed_video(directory / "zero_fps.mp4", [0, 100, 200, 300, 400, 500])
    data = bytearray(path.read_bytes())
    stts = data.index(b"stts")  # box type; then version/flags, entry count, (count, delta) pairs
    (entries,) = struct.unpack_from(">I", data, stts + 8)
    for k in range(entries):
        struct.pack_into(">I", data, stts + 16 + 8 * k, 0)
    path.write_bytes(bytes(data))
    return path


def rotated(
    directory: Path, degrees: int = 90, image: np.ndarray | None = None, frames: int = 4
) -> Path:
    """A video of ``image`` (default: a wide 64x32 :func:`halves_frame`) with a display matrix.

    ``degrees`` is counter-clockwise, as PyAV's ``set_display_rotation`` and
    ``VideoFrame.rotation`` count it; the MP4 muxer writes it into the track header matrix, the
    same place phones put it.
    """
    path = directory / f"rotated_{degrees}.mp4"
    image = halves_frame((64, 32)) if image is None else image
    height, width = image.shape[:2]
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        stream.options = {"crf": "12"}
        stream.set_display_rotation(degrees)
        for _ in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def repeated_timestamps(directory: Path) -> Path:
    """A Matroska file declaring 30 fps whose four frames all carry timestamp 0."""
    path = directory / "repeated_timestamps.mkv"
    with av.open(str(path), mode="w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.thread_count = 1
        packets = []
        for image in indexed_frames(4, (32, 32)):
            packets += stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24"))
        packets += stream.encode()
        for packet in packets:
            packet.pts = packet.dts = 0
            out.mux(packet)
    return path


def pts_copied_from_dts(directory: Path, frames: int = 20) -> Path:
    """An H.264 MP4 with B-frames whose muxer wrote every packet's pts = its dts.

    Real sample clips come like this: the decoder still emits the pictures in presentation
    order, but their timestamps come out disordered (0, 1024, 512, ...). Every player shows it.
    Frames are :func:`indexed_frames` (read the level with a median) with a white bar moving
    across, which makes the encoder use B-frames.
    """
    path = directory / "pts_copied_from_dts.mp4"
    images = indexed_frames(frames, (64, 48))
    for index, image in enumerate(images):
        image[:, 3 * index % 64 : 3 * index % 64 + 3] = 255
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "12", "bf": "3"}
        packets = []
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 30)
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            packet.pts = packet.dts
            out.mux(packet)
    return path


def stamped_out_of_order(directory: Path, order: Sequence[int]) -> Path:
    """A Matroska file of intra-only (MJPEG) :func:`indexed_frames` stored in file order whose
    frame ``i`` is stamped at ``order[i] / 10`` s: the stamps are the only order there is."""
    path = directory / "stamped_out_of_order.mkv"
    with av.open(str(path), mode="w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        for index, image in enumerate(indexed_frames(len(order), (32, 32))):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            for packet in stream.encode(frame):
                packet.time_base = Fraction(1, 10)
                packet.pts, packet.dts = order[index], min(order[index:])  # dts <= pts, monotonic
                out.mux(packet)
        out.mux(stream.encode())
    return path


def raw_h264(directory: Path, frames: int = 10) -> Path:
    """A bare H.264 elementary stream (``.h264``): no container, no timestamps, no duration."""
    path = directory / "raw.h264"
    with av.open(str(path), mode="w", format="h264") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.thread_count = 1
        for image in indexed_frames(frames, (32, 32)):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def with_audio(directory: Path) -> Path:
    """A 10 fps video of :func:`indexed_frames` with an AAC soundtrack, like a phone clip."""
    path = directory / "with_audio.mp4"
    rate = 16000
    with av.open(str(path), mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        video.thread_count = 1
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for image in indexed_frames(10, (32, 32)):
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode())
        silence = av.AudioFrame.from_ndarray(
            np.zeros((1, rate), dtype=np.float32), format="fltp", layout="mono"
        )
        silence.sample_rate, silence.pts = rate, 0
        out.mux(audio.encode(silence))
        out.mux(audio.encode())
    return path


class _Bits:
    """Minimal big-endian bit reader for the H.264 fields we need to skip over."""

    def __init__(self, data: bytes) -> None:
        self.bits = "".join(f"{byte:08b}" for byte in data)
        self.pos = 0

    def u(self, n: int) -> int:
        value = int(self.bits[self.pos : self.pos + n], 2)
        self.pos += n
        return value

    def ue(self) -> int:
        """Unsigned Exp-Golomb code."""
        zeros = 0
        while self.bits[self.pos] == "0":
            zeros += 1
            self.pos += 1
        self.pos += 1
        suffix = self.u(zeros) if zeros else 0
        return (1 << zeros) - 1 + suffix


def _ue_bits(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def _patch_sps_size(nal: bytes, width_mbs: int, height_mbs: int) -> bytes:
    """Rewrite the picture size of a *baseline* H.264 SPS NAL (header byte included).

    The size fields are Exp-Golomb coded, so the NAL changes length: the fields before them are
    parsed to find their bit position, the rest is copied, and emulation prevention is redone.
    """
    rbsp = nal[1:].replace(b"\x00\x00\x03", b"\x00\x00")
    reader = _Bits(rbsp)
    profile = reader.u(8)
    if profile != 66:
        raise ValueError(f"only the baseline profile is supported, got profile_idc {profile}")
    reader.u(16)  # constraint flags, level_idc
    reader.ue()  # seq_parameter_set_id
    reader.ue()  # log2_max_frame_num_minus4
    if reader.ue() == 0:  # pic_order_cnt_type (x264 writes 0 or 2 for baseline)
        reader.ue()  # log2_max_pic_order_cnt_lsb_minus4
    reader.ue()  # max_num_ref_frames
    reader.u(1)  # gaps_in_frame_num_value_allowed_flag
    start = reader.pos
    reader.ue()
    reader.ue()
    bits = (
        reader.bits[:start]
        + _ue_bits(width_mbs - 1)
        + _ue_bits(height_mbs - 1)
        + reader.bits[reader.pos :]
    ).rstrip("0")  # drop byte-alignment zeros after the RBSP stop bit, then realign
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big")
    escaped = re.sub(rb"\x00\x00(?=[\x00-\x03])", b"\x00\x00\x03", payload)
    return nal[:1] + escaped


def huge_declared_size(directory: Path) -> Path:
    """A ~1 kB MP4 whose H.264 headers declare a 10000x10000 picture.

    One 16x16 frame is encoded, then its sequence parameter set is rewritten to 625x625
    macroblocks before muxing, so the container (track header, sample entry) and the bitstream
    agree on 10000x10000. Decoding it makes libavcodec allocate ~150 MB per picture, which is what
    the probe must refuse to do. Making it allocates nothing large: the remux reads the stream
    with ``skip_frame=all`` so stream-info probing decodes no picture.
    """
    raw = io.BytesIO()
    with av.open(raw, mode="w", format="h264") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.thread_count = 1
        stream.options = {"profile": "baseline"}
        image = np.zeros((16, 16, 3), dtype=np.uint8)
        out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    annexb = raw.getvalue()
    # NAL units follow 00 00 01 start codes; the SPS has nal_unit_type 7.
    sps_start = next(
        m.end() for m in re.finditer(b"\x00\x00\x01", annexb) if annexb[m.end()] & 31 == 7
    )
    sps_end = annexb.index(b"\x00\x00\x01", sps_start)
    while annexb[sps_end - 1] == 0:  # a 4-byte start code's leading zero
        sps_end -= 1
    patched = annexb[:sps_start] + _patch_sps_size(annexb[sps_start:sps_end], 625, 625)
    patched += annexb[sps_end:]

    path = directory / "huge_declared_size.mp4"
    with (
        av.open(io.BytesIO(patched), format="h264", options={"skip_frame": "all"}) as src,
        av.open(str(path), mode="w", format="mp4") as out,
    ):
        src_stream = src.streams.video[0]
        out_stream = out.add_stream_from_template(src_stream)
        for index, packet in enumerate(src.demux(src_stream)):
            if packet.size == 0:
                continue
            packet.stream = out_stream
            packet.pts = packet.dts = index
            packet.duration = 1
            packet.time_base = Fraction(1, 10)
            out.mux(packet)
    return path


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` pixels (a
    decompression bomb's shape: Pillow refuses to open more than about 179 million)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
