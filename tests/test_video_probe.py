"""probe_video: true facts about good files, one clear reason for every kind of bad file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from tests import video_fixtures as vf
from viva_pipelines.config.schema import LimitsSettings
from viva_pipelines.video.normalise import NormaliseSpec, decode_normalised
from viva_pipelines.video.probe import (
    DEFAULT_LIMITS,
    VideoProbe,
    VideoRejected,
    probe_video,
    scan_video,
)


def rejection(path: Path, limits: LimitsSettings = DEFAULT_LIMITS) -> str:
    with pytest.raises(VideoRejected) as caught:
        probe_video(path, limits)
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def test_good_video_probes_to_what_was_written(tmp_path: Path):
    path = vf.good_video(tmp_path / "good.mp4", frames=12, size=(64, 48), fps=10)
    probe = probe_video(path)
    assert probe == VideoProbe(
        container="mov,mp4,m4a,3gp,3g2,mj2",
        codec="h264",
        width=64,
        height=48,
        rotation=0,
        fps=10.0,
        frame_count=12,
        duration_s=1.2,
        has_audio=False,
        variable_frame_rate=False,
        bytes=path.stat().st_size,
    )
    row = probe.to_dict()
    assert list(row) == [
        "container",
        "codec",
        "width",
        "height",
        "rotation",
        "fps",
        "frame_count",
        "duration_s",
        "has_audio",
        "variable_frame_rate",
        "bytes",
        "timestamp_repair",
    ]
    assert json.loads(json.dumps(row)) == row  # plain scalars, fit for a Parquet row


def test_audio_track_and_rotation_are_reported(tmp_path: Path):
    assert probe_video(vf.with_audio(tmp_path)).has_audio
    probe = probe_video(vf.rotated(tmp_path, 90))
    assert (probe.width, probe.height, probe.rotation) == (64, 32, 90)
    assert (probe.display_width, probe.display_height) == (32, 64)
    assert probe_video(vf.rotated(tmp_path, -90)).rotation == 270


def test_variable_frame_rate_is_detected_from_timestamps(tmp_path: Path):
    probe = probe_video(vf.variable_frame_rate(tmp_path, [0, 100, 150, 400, 420, 700]))
    assert probe.variable_frame_rate
    assert probe.frame_count == 6
    # last frame lasts the median gap (100 ms)
    assert probe.duration_s == pytest.approx(0.8)


def test_raw_stream_without_timestamps_is_timed_by_frame_durations(tmp_path: Path):
    probe = probe_video(vf.raw_h264(tmp_path, frames=10))
    assert (probe.container, probe.frame_count, probe.variable_frame_rate) == ("h264", 10, False)
    assert probe.duration_s == pytest.approx(1.0)


def _levels(frames) -> list[int]:
    return [vf.level_index(np.median(frame[..., 0])) for frame in frames]


def test_pts_copied_from_dts_keeps_the_decoder_order_and_is_retimed(tmp_path: Path):
    """The decoder emits B-frame pictures in presentation order; only their stamps are wrong."""
    path = vf.pts_copied_from_dts(tmp_path)
    with av.open(str(path)) as container:
        stamps = [frame.pts for frame in container.decode(video=0)]
    assert stamps != sorted(stamps)  # the fixture really is disordered
    probe = probe_video(path)
    assert probe.frame_count == len(stamps)
    assert "re-timed" in probe.timestamp_repair
    assert not probe.variable_frame_rate  # the sorted stamps are a regular 30 fps grid
    video = decode_normalised(path, NormaliseSpec(64, 48, fps=30, max_frames=100))
    levels = _levels(video.frames)
    assert levels == sorted(levels) and len(set(levels)) == len(levels) == len(stamps)


def test_intra_frames_stored_out_of_order_are_sorted_by_their_timestamps(tmp_path: Path):
    order = [1, 0, 2, 4, 3, 5, 6, 7, 9, 8]
    path = vf.stamped_out_of_order(tmp_path, order)
    probe = probe_video(path)
    assert probe.frame_count == 10 and probe.duration_s == pytest.approx(1.0)
    assert probe.timestamp_repair == "3 frames moved into timestamp order"
    video = decode_normalised(path, NormaliseSpec(32, 32, fps=10, max_frames=100))
    assert _levels(video.frames) == [order.index(t) for t in range(10)]


def test_disorder_deeper_than_the_reorder_window_is_rejected(tmp_path: Path):
    path = vf.stamped_out_of_order(tmp_path, [*range(1, 12), 0])  # the last frame stamped first
    assert "no presentation order can be recovered" in rejection(path)


BAD_FILES: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "zero_byte": (vf.zero_byte, ["empty file (0 bytes)"]),
    "truncated_mid_stream": (vf.truncated, ["corrupt or truncated stream"]),
    "truncated_index_lost": (
        lambda d: vf.truncated(d, faststart=False),
        ["corrupt or truncated mp4/mov file", "moov"],
    ),
    "corrupt_middle": (
        vf.corrupt_middle,
        ["corrupt or truncated stream: decoding failed after", "invalid data"],
    ),
    "png_renamed": (lambda d: vf.wrong_container(d, "png"), ["not a video", "still image"]),
    "text_renamed": (lambda d: vf.wrong_container(d, "text"), ["not a video", "unrecognised"]),
    "audio_only": (vf.audio_only, ["no video stream", "audio"]),
    "single_frame": (vf.single_frame, ["too few frames (1 decoded, at least 2 needed)"]),
    "zero_fps": (vf.zero_fps, ["frame rate is 0 or unknown"]),
    "huge_declared_size": (vf.huge_declared_size, ["frame size too large", "10000x10000"]),
    "repeated_timestamps": (vf.repeated_timestamps, ["corrupt timestamps"]),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_every_bad_file_is_rejected_with_its_reason(tmp_path: Path, kind: str):
    make, words = BAD_FILES[kind]
    reason = rejection(make(tmp_path)).lower()
    for word in words:
        assert word in reason, reason


def test_limits_on_file_size_and_duration(tmp_path: Path):
    path = vf.good_video(tmp_path / "good.mp4", frames=10, fps=10)  # 1.0 s
    size = path.stat().st_size
    assert rejection(path, LimitsSettings(max_file_mb=1000 / 2**20)) == (
        f"file too large ({size} bytes > limit 1000 bytes)"
    )
    assert "1.0 s declared > limit 0.5 s" in rejection(path, LimitsSettings(max_duration_s=0.5))
    # A raw stream declares no duration: the limit stops the decode itself...
    raw = vf.raw_h264(tmp_path, frames=10)
    assert "a frame at 0.6 s > limit 0.5 s" in rejection(raw, LimitsSettings(max_duration_s=0.5))
    # ...and the last frame's own duration counts too (frames at 0.0 .. 0.9 s, ending at 1.0 s).
    assert "1.0 s decoded > limit 0.95 s" in rejection(raw, LimitsSettings(max_duration_s=0.95))
    assert "too few frames (10 decoded" in rejection(path, LimitsSettings(min_frames=11))


def test_missing_file_is_a_rejection_not_an_oserror(tmp_path: Path):
    assert "cannot read file" in rejection(tmp_path / "nowhere.mp4")


def test_huge_declared_size_is_rejected_fast_without_allocating(tmp_path: Path):
    """The 10000x10000 header must be refused before libav allocates a picture (~150 MB each).

    Peak memory is measured in fresh interpreters; the control run opens the same file the
    default way (stream-info probing decodes the first frame) to show the fixture is a real
    threat, not a file libav would have refused anyway.
    """
    path = vf.huge_declared_size(tmp_path)
    started = time.perf_counter()
    assert "10000x10000" in rejection(path)
    assert time.perf_counter() - started < 2.0

    def peak_mb(body: str) -> float:
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a large
        # pytest process would report the parent's peak.
        code = f"import av\nfrom viva_pipelines.video.probe import *\n{body}\n"
        code += "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        code += "print(int(hwm.split()[1]) / 1024)"
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        return float(done.stdout.split()[-1])

    baseline = peak_mb("pass")  # interpreter, numpy, PyAV and this package
    probed = peak_mb(f"try:\n    probe_video({str(path)!r})\nexcept VideoRejected:\n    pass")
    control = peak_mb(f"av.open({str(path)!r}).close()")
    assert probed - baseline < 30, (probed, baseline)
    assert control - baseline > 150, (control, baseline)


def test_scan_stops_decoding_when_told_but_still_counts_every_frame(tmp_path: Path):
    path = vf.good_video(tmp_path / "good.mp4", frames=20)
    seen: list[tuple[int, float]] = []

    def on_frame(index: int, time_s: float, frame: av.VideoFrame) -> bool:
        seen.append((index, round(time_s, 3)))
        return index == 2

    probe = scan_video(path, on_frame=on_frame)
    assert seen == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert probe == probe_video(path)  # the demuxed tail completes the same facts


def test_truncation_after_the_decoded_part_is_still_caught(tmp_path: Path):
    path = vf.truncated(tmp_path)
    with pytest.raises(VideoRejected, match="corrupt or truncated stream"):
        scan_video(path, on_frame=lambda index, time_s, frame: True)
