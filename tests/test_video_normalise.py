"""decode_normalised / normalise_masks: timing by timestamp, upright frames, exact geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import video_fixtures as vf
from viva_pipelines.video.io import write_video
from viva_pipelines.video.normalise import (
    NormaliseSpec,
    decode_normalised,
    fit_frame,
    normalise_masks,
)
from viva_pipelines.video.probe import VideoRejected, probe_video

GREEN = (0, 255, 0)


def levels(frames: np.ndarray) -> list[int]:
    """Source frame index of each solid grey frame of ``vf.indexed_frames``."""
    return [vf.level_index(frame.mean()) for frame in frames]


def close(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    """Equal up to H.264 and chroma-subsampling error."""
    return bool(np.abs(pixel.astype(int) - colour).max() < 40)


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (10, list(range(20))),  # same rate: every frame once
        (5, list(range(0, 20, 2))),  # half rate: every other frame
        (20, [i // 2 for i in range(40)]),  # double rate: each frame twice
        (3, [0, 3, 6, 10, 13, 16]),  # ticks at 0, 1/3, 2/3 s ...: the frame at or before
    ],
)
def test_constant_rate_resampling_picks_the_frame_shown_at_each_tick(
    tmp_path: Path, fps: float, expected: list[int]
):
    path = vf.good_video(tmp_path / "good.mp4", frames=20, size=(32, 32), fps=10)
    video = decode_normalised(path, NormaliseSpec(32, 32, fps, max_frames=100))
    assert video.source_indices.tolist() == expected
    assert levels(video.frames) == expected
    assert video.frames.shape == (len(expected), 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.fps == fps


def test_variable_frame_rate_is_resampled_by_timestamp(tmp_path: Path):
    # Frames shown at 0, 100, 150, 400, 420 and 700 ms; 10 fps output ticks every 100 ms and
    # shows the last frame that started at or before the tick, until 800 ms (last frame + the
    # median 100 ms gap).
    path = vf.variable_frame_rate(tmp_path, [0, 100, 150, 400, 420, 700])
    video = decode_normalised(path, NormaliseSpec(32, 32, 10, max_frames=100))
    expected = [0, 1, 2, 2, 3, 4, 4, 5]
    assert video.source_indices.tolist() == expected
    assert levels(video.frames) == expected
    assert video.probe.variable_frame_rate


def test_max_frames_caps_the_output_but_the_probe_covers_the_whole_file(tmp_path: Path):
    path = vf.good_video(tmp_path / "good.mp4", frames=20, size=(32, 32), fps=10)
    video = decode_normalised(path, NormaliseSpec(32, 32, 10, max_frames=4))
    assert video.source_indices.tolist() == [0, 1, 2, 3]
    assert levels(video.frames) == [0, 1, 2, 3]
    assert video.probe == probe_video(path)
    assert video.probe.frame_count == 20


@pytest.mark.parametrize(
    ("degrees", "size", "regions"),
    [
        # stored 64x32: left half red, right half blue; rotating 90 degrees counter-clockwise
        # turns the left edge into the bottom edge.
        (90, (16, 32), {"top": vf.BLUE, "bottom": vf.RED}),
        (270, (16, 32), {"top": vf.RED, "bottom": vf.BLUE}),
        (180, (32, 16), {"left": vf.BLUE, "right": vf.RED}),
    ],
)
def test_rotation_metadata_makes_frames_upright(tmp_path: Path, degrees, size, regions):
    path = vf.rotated(tmp_path, degrees)
    video = decode_normalised(path, NormaliseSpec(*size, fps=10, max_frames=10))
    frame = video.frames[0]
    assert frame.shape == (size[1], size[0], 3)
    h, w = frame.shape[:2]
    centre = {
        "top": frame[h // 4, w // 2],
        "bottom": frame[3 * h // 4, w // 2],
        "left": frame[h // 2, w // 4],
        "right": frame[h // 2, 3 * w // 4],
    }
    for where, colour in regions.items():
        assert close(centre[where], colour), (where, centre[where])


def _stripes(size: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]``: thirds red | green | blue from left to right."""
    width, height = size
    frame = np.empty((height, width, 3), np.uint8)
    third = width // 3
    frame[:, :third], frame[:, third : 2 * third], frame[:, 2 * third :] = vf.RED, GREEN, vf.BLUE
    return frame


def test_crop_fills_the_frame_and_cuts_both_sides_equally(tmp_path: Path):
    path = tmp_path / "wide.mp4"
    write_video(path, np.stack([_stripes((96, 32))] * 3), 10)
    frame = decode_normalised(path, NormaliseSpec(32, 32, 10, max_frames=1)).frames[0]
    # scale 1 (the height fits), keep columns 32..63: only the green third
    assert close(frame[16, 2], GREEN) and close(frame[16, 29], GREEN)


def test_pad_letterboxes_with_black_and_keeps_everything(tmp_path: Path):
    path = tmp_path / "wide.mp4"
    write_video(path, np.stack([_stripes((96, 32))] * 3), 10)
    frame = decode_normalised(path, NormaliseSpec(48, 48, 10, max_frames=1, resize="pad")).frames[0]
    # scale 0.5 → 48x16 picture in rows 16..31, black bars of 16 rows above and below
    assert frame[:14].max() < 20 and frame[34:].max() < 20
    assert close(frame[24, 4], vf.RED) and close(frame[24, 24], GREEN)
    assert close(frame[24, 44], vf.BLUE)


def test_fit_frame_geometry_exactly():
    image = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8)  # [h=4, w=8]
    crop = fit_frame(image, NormaliseSpec(4, 4, 1, 1, "crop"), nearest=True)
    np.testing.assert_array_equal(crop, image[:, 2:6])
    pad = fit_frame(image, NormaliseSpec(8, 8, 1, 1, "pad"), nearest=True)
    np.testing.assert_array_equal(pad[2:6], image)
    assert not pad[:2].any() and not pad[6:].any()
    up = fit_frame(image, NormaliseSpec(16, 16, 1, 1, "pad"), nearest=True)
    np.testing.assert_array_equal(up[4:12], np.repeat(np.repeat(image, 2, 0), 2, 1))


def _square_video(size: tuple[int, int], box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Black ``[H, W, 3]`` frame with a white square at ``box``, and its id-3 mask ``[H, W]``."""
    width, height = size
    frame = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    frame[box], mask[box] = 255, 3
    return frame, mask


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_masks_land_where_their_pixels_land(tmp_path: Path, resize: str):
    frame, mask = _square_video((96, 64), (slice(20, 44), slice(40, 64)))
    path = tmp_path / "square.mp4"
    write_video(path, np.stack([frame] * 10), 10)
    spec = NormaliseSpec(32, 48, 5, max_frames=4, resize=resize)
    video = decode_normalised(path, spec)
    masks = normalise_masks(np.stack([mask] * 10), video.source_indices, spec, video.probe)
    assert masks.shape == (4, 48, 32) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == {0, 3}  # ids stay ids: no blending at edges
    bright = video.frames.mean(axis=-1) > 128
    assert ((masks == 3) == bright).mean() > 0.98


def test_masks_of_a_rotated_video_are_in_the_upright_orientation(tmp_path: Path):
    frame, _ = _square_video((64, 32), (slice(4, 20), slice(8, 24)))
    path = vf.rotated(tmp_path, 90, image=frame, frames=6)
    spec = NormaliseSpec(16, 32, 10, max_frames=6)
    video = decode_normalised(path, spec)
    upright_mask = (np.rot90(frame, 1).mean(axis=-1) > 128).astype(np.uint8) * 3  # [64, 32]
    masks = normalise_masks(np.stack([upright_mask] * 6), video.source_indices, spec, video.probe)
    bright = video.frames.mean(axis=-1) > 128
    assert bright.any() and ((masks == 3) == bright).mean() > 0.97


def test_masks_that_do_not_match_the_source_are_refused(tmp_path: Path):
    path = vf.rotated(tmp_path, 90, frames=6)  # stored 64x32, upright 32x64
    spec = NormaliseSpec(16, 32, 10, max_frames=6)
    video = decode_normalised(path, spec)
    indices, probe = video.source_indices, video.probe
    good = np.zeros((6, 64, 32), np.uint8)
    assert normalise_masks(good, indices, spec, probe).shape == (6, 32, 16)
    with pytest.raises(ValueError, match="masks have 5 frames but the source video has 6"):
        normalise_masks(good[:5], indices, spec, probe)
    with pytest.raises(ValueError, match="match the stored frames, but the video is rotated 90"):
        normalise_masks(np.zeros((6, 32, 64), np.uint8), indices, spec, probe)
    with pytest.raises(ValueError, match="masks are 30x64 but the upright source frames are 32x64"):
        normalise_masks(np.zeros((6, 64, 30), np.uint8), indices, spec, probe)
    with pytest.raises(ValueError, match="uint8"):
        normalise_masks(good.astype(np.int32), indices, spec, probe)
    with pytest.raises(ValueError, match="out of range"):
        normalise_masks(good, np.array([0, 6]), spec, probe)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 31}, "even"),
        ({"height": 0}, "even"),
        ({"fps": 0}, "fps"),
        ({"max_frames": 0}, "max_frames"),
        ({"resize": "stretch"}, "resize"),
    ],
)
def test_spec_is_validated(kwargs: dict, message: str):
    args = {"width": 32, "height": 32, "fps": 8, "max_frames": 17, **kwargs}
    with pytest.raises(ValueError, match=message):
        NormaliseSpec(**args)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (vf.zero_byte, "empty file"),
        (vf.corrupt_middle, "corrupt or truncated stream"),
        (vf.huge_declared_size, "10000x10000"),
        (vf.audio_only, "no video stream"),
    ],
)
def test_bad_files_are_rejected_like_probe_does(tmp_path: Path, make, words: str):
    with pytest.raises(VideoRejected, match=words):
        decode_normalised(make(tmp_path), NormaliseSpec(32, 32, 10, max_frames=100))
