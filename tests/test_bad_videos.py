"""Bad video files not covered by test_video_probe.py / test_video_normalise.py / test_ingest.py:
randomly damaged files (hypothesis: truncation at any offset, flipped bytes), every bad kind
through ``decode_normalised``, and a shard holding exactly one bad file among good ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests import video_fixtures as vf
from viva_pipelines.config.schema import LimitsSettings
from viva_pipelines.ingest.raw_videos import OK, REJECTED, IngestOptions, ingest_shard
from viva_pipelines.ingest.shards import scan_and_register, shard_members
from viva_pipelines.storage import Storage
from viva_pipelines.video.normalise import NormaliseSpec, decode_normalised
from viva_pipelines.video.probe import VideoRejected, probe_video

SPEC = NormaliseSpec(32, 32, 10, max_frames=12)
LIMITS = LimitsSettings(max_pixels=1920 * 1080)
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("good")
    return {
        ".mp4": vf.good_video(folder / "good.mp4", frames=12, size=(64, 48)).read_bytes(),
        ".mkv": vf.good_video(folder / "good.mkv", frames=12, size=(64, 48)).read_bytes(),
    }


def _check_outcome(path: Path) -> None:
    """A damaged file is either rejected with a one-line reason or decodes to sane output."""
    try:
        video = decode_normalised(path, SPEC, LIMITS)
    except VideoRejected as exc:
        assert exc.reason and "\n" not in exc.reason and "Traceback" not in exc.reason
        return
    assert video.frames.dtype == np.uint8 and video.frames.shape[1:] == (32, 32, 3)
    assert 1 <= len(video.frames) <= SPEC.max_frames
    assert video.probe.frame_count >= LIMITS.min_frames


@FUZZ
@given(suffix=st.sampled_from([".mp4", ".mkv"]), cut=st.floats(0.0, 1.0))
@example(suffix=".mp4", cut=0.0)
@example(suffix=".mkv", cut=0.5)
def test_truncation_at_any_offset_is_rejected_or_decodes(
    tmp_path: Path, good_bytes: dict[str, bytes], suffix: str, cut: float
):
    data = good_bytes[suffix]
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * cut)])
    _check_outcome(path)


@FUZZ
@given(
    suffix=st.sampled_from([".mp4", ".mkv"]),
    flips=st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)),
        min_size=1,
        max_size=12,
    ),
)
def test_flipped_bytes_are_rejected_or_decode(
    tmp_path: Path, good_bytes: dict[str, bytes], suffix: str, flips: list[tuple[float, int]]
):
    data = bytearray(good_bytes[suffix])
    for where, value in flips:
        data[int(where * len(data))] = value
    path = tmp_path / f"flipped{suffix}"
    path.write_bytes(bytes(data))
    _check_outcome(path)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (vf.truncated, "truncated"),
        (lambda d: vf.truncated(d, faststart=False), "moov"),
        (lambda d: vf.wrong_container(d, "png"), "still image"),
        (lambda d: vf.wrong_container(d, "text"), "not a video"),
        (vf.zero_fps, "frame rate is 0 or unknown"),
        (vf.single_frame, "too few frames"),
        (vf.repeated_timestamps, "corrupt timestamps"),
    ],
)
def test_normalise_rejects_what_probe_rejects(tmp_path: Path, make, words: str):
    path = make(tmp_path)
    with pytest.raises(VideoRejected, match=words):
        decode_normalised(path, SPEC)
    with pytest.raises(VideoRejected, match=words):
        probe_video(path)


@pytest.mark.parametrize(
    "make", [vf.zero_byte, vf.huge_declared_size, vf.audio_only], ids=["empty", "huge", "audio"]
)
def test_a_shard_with_one_bad_file_among_good_ones_completes(tmp_path: Path, make):
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    for index in range(3):
        vf.good_video(source_dir / f"good{index}.mp4", frames=8, size=(48, 32), fps=8)
    shutil.move(make(tmp_path), source_dir / "bad.mp4")
    storage, source = Storage(str(tmp_path / "root")), Storage(str(source_dir))
    registry, _ = scan_and_register(storage, source, [".mp4"], 64)
    members = shard_members(registry, "shard-000000")
    options = IngestOptions(NormaliseSpec(32, 32, 8, max_frames=5), LimitsSettings(), crf=12)
    result = ingest_shard(storage, source, "shard-000000", members, options)
    manifest = result.manifest.set_index("source_key")
    assert sorted(manifest.index) == ["bad.mp4", "good0.mp4", "good1.mp4", "good2.mp4"]
    assert (manifest.loc[["good0.mp4", "good1.mp4", "good2.mp4"], "status"] == OK).all()
    assert manifest.loc["bad.mp4", "status"] == REJECTED
    assert manifest.loc["bad.mp4", "reason"]
    assert storage.exists("raw_videos/shard-000000/manifest.parquet")
