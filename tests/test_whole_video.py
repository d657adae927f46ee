"""Editing whole videos: windows, blending, source size/rate/rotation, audio, bad requests.

The model is a stand-in whose edit of a clip is a known function of each frame (its negative),
so every output frame can be checked against exactly the frame it must come from; the real
model's path is exercised by the SFT and CLI tests.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from tests import video_fixtures as vf
from tests.footage import ClipSpec, write_clip
from viva_pipelines import cli
from viva_pipelines.model.clips import ClipGeometry
from viva_pipelines.model.whole_video import (
    EditRequestError,
    beside,
    blend_weights,
    check_request,
    crop_box,
    edit_batch,
    edit_whole_video,
    put_back,
    window_starts,
)
from viva_pipelines.video.probe import probe_video, rotation_degrees

GEOMETRY = ClipGeometry(frames=4, frame_stride=4, height=16, width=16)


class Negative:
    """Edits a clip into its negative, frame by frame; counts its calls."""

    spec = SimpleNamespace(geometry=GEOMETRY)

    def __init__(self) -> None:
        self.clips: list[int] = []

    def prepare(self, instruction, first_frame, reference):
        return instruction

    def edit_clip(self, clip, prepared, **sampling):
        assert clip.shape == (4, 16, 16, 3)
        self.clips.append(len(clip))
        return 255 - clip


def _upright_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [
            np.ascontiguousarray(np.rot90(f.to_ndarray(format="rgb24"), rotation_degrees(f) // 90))
            for f in container.decode(video=0)
        ]


def test_windows_cover_every_frame_and_cross_fade():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(11, 4, 2) == [0, 2, 4, 6, 7]  # the last one ends at the last frame
    assert window_starts(3, 4, 2) == [0]
    np.testing.assert_allclose(blend_weights(4, 2), [1 / 3, 2 / 3, 2 / 3, 1 / 3])
    np.testing.assert_allclose(blend_weights(4, 0), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 4, 4)


def test_the_edited_crop_goes_back_where_the_model_saw_it():
    frame = np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8)
    assert crop_box(96, 48, GEOMETRY) == (24, 0, 72, 48)  # a centred square
    back = put_back(frame, GEOMETRY.fit(frame), GEOMETRY)
    assert np.array_equal(back[:, :24], frame[:, :24]) and np.array_equal(
        back[:, 72:], frame[:, 72:]
    )
    # unchanged model output + preserve_unchanged: every pixel is the original, bit for bit
    small = GEOMETRY.fit(frame)
    assert np.array_equal(put_back(frame, small, GEOMETRY, small), frame)


CLIPS = {
    "odd_rotated.mp4": ClipSpec("mp4-h264", 65, 49, Fraction(25), 23, "yuv444p", rotation=90),
    "vfr.mkv": ClipSpec("mkv-mjpeg", 96, 64, Fraction(30), 11, "yuvj420p", timestamps="vfr"),
    "short.mp4": ClipSpec("mp4-h264", 64, 48, Fraction(10), 3, "yuv420p"),
    "ntsc.mov": ClipSpec("mov-mpeg4", 96, 64, Fraction(30000, 1001), 14, "yuv420p"),
}


@pytest.mark.parametrize("name", [*CLIPS, "with_audio.mp4"])
def test_every_source_frame_comes_back_once_at_the_source_size_rate_and_audio(tmp_path, name):
    if name == "with_audio.mp4":
        source = vf.with_audio(tmp_path)
    else:
        source = write_clip(tmp_path / name, CLIPS[name])
    model = Negative()
    result = edit_whole_video(model, source, "invert", tmp_path / "out.mp4", progress=False)
    before, after = probe_video(source), probe_video(result.path)
    assert (after.width, after.height) == (before.display_width, before.display_height)
    assert after.frame_count == before.frame_count == result.frames
    assert after.fps == pytest.approx(before.fps, rel=1e-3)
    assert after.has_audio == before.has_audio == result.has_audio
    assert not list(tmp_path.glob(".*partial*"))  # the temporary name is gone
    frames, edited = _upright_frames(source), _upright_frames(result.path)
    expected = [put_back(f, 255 - GEOMETRY.fit(f), GEOMETRY) for f in frames]
    for index, got in enumerate(edited):
        error = np.abs(got.astype(int) - expected[index]).mean()
        assert error < 4, (index, error)  # its own frame's edit, through the codec
        if index > 0 and np.abs(expected[index].astype(int) - expected[index - 1]).mean() > 12:
            assert np.abs(got.astype(int) - expected[index - 1]).mean() > error
    assert len(model.clips) == len(window_starts(len(frames), 4, 2))


def test_preserve_unchanged_keeps_the_original_pixels_where_the_model_changed_nothing(tmp_path):
    source = write_clip(tmp_path / "in.mp4", CLIPS["ntsc.mov"].__class__(
        "mp4-h264", 128, 96, Fraction(25), 8, "yuv444p"))  # fmt: skip

    class CornerOnly(Negative):
        def edit_clip(self, clip, prepared, **sampling):
            out = clip.copy()
            out[:, :6, :6] = 255 - out[:, :6, :6]
            return out

    plain = edit_whole_video(CornerOnly(), source, "x", tmp_path / "a.mp4", progress=False)
    kept = edit_whole_video(CornerOnly(), source, "x", tmp_path / "b.mp4", progress=False,
                            preserve_unchanged=True)  # fmt: skip
    src, a, b = (np.stack(_upright_frames(p)).astype(int) for p in (source, plain.path, kept.path))
    far = (slice(None), slice(60, None), slice(40, None))  # away from the changed corner
    assert np.abs(b[far] - src[far]).mean() < np.abs(a[far] - src[far]).mean() / 2
    corner = (slice(None), slice(0, 20), slice(16, 36))  # the crop's top-left corner, changed
    assert np.abs(b[corner] - src[corner]).mean() > 30


def test_bad_requests_are_refused_naming_the_thing(tmp_path):
    video = vf.good_video(tmp_path / "in.mp4", frames=4)
    out = tmp_path / "out.mp4"
    with pytest.raises(EditRequestError, match=r"video .*nope\.mp4: no such file"):
        check_request(tmp_path / "nope.mp4", "x", out)
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(EditRequestError, match=r"text\.mp4: not a readable video"):
        check_request(tmp_path / "text.mp4", "x", out)
    with pytest.raises(EditRequestError, match="the instruction is empty"):
        check_request(video, "  ", out)
    with pytest.raises(EditRequestError, match=r"reference .*ref\.png: no such file"):
        check_request(video, "x", out, tmp_path / "ref.png")
    out.write_bytes(b"old")
    with pytest.raises(EditRequestError, match=r"out\.mp4 exists \(pass --overwrite"):
        check_request(video, "x", out)
    check_request(video, "x", out, overwrite=True)
    with pytest.raises(EditRequestError, match="cannot create the output folder"):
        check_request(video, "x", video / "sub" / "o.mp4")
    code = cli.main(["edit", "--model", str(tmp_path), "--video", str(tmp_path / "nope.mp4"),
                     "--instruction", "x", "--out", str(tmp_path / "o.mp4")])  # fmt: skip
    assert code == 2 and not (tmp_path / "o.mp4").exists()


def test_a_batch_loads_the_model_once_and_records_every_bad_line(tmp_path):
    vf.good_video(tmp_path / "a.mp4", frames=6)
    vf.good_video(tmp_path / "b.mp4", frames=5, size=(48, 32))
    lines = [
        '{"video": "a.mp4", "instruction": "invert", "out": "out/a.mp4"}',
        "{not json",
        '{"video": "missing.mp4", "instruction": "x", "out": "out/m.mp4"}',
        '{"video": "a.mp4", "out": "out/n.mp4"}',
        "",
        '{"video": "b.mp4", "instruction": "invert", "out": "out/b.mp4"}',
        '{"video": "b.mp4", "instruction": "invert", "out": "out/c.mp4", "prompt": "x"}',
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(lines))
    loads = []

    def load():
        loads.append(1)
        return Negative()

    results = edit_batch(
        load, requests.read_text().splitlines(), beside(tmp_path), progress=False,
        preview_frames=3,
    )  # fmt: skip
    assert len(loads) == 1
    assert [(r["line"], r["status"]) for r in results] == [
        (1, "ok"), (2, "failed"), (3, "failed"), (4, "failed"), (6, "ok"), (7, "failed"),
    ]  # fmt: skip
    assert "not JSON" in results[1]["reason"]
    assert "unknown key prompt" in results[5]["reason"]
    # source | edit for the first, middle and last frame (5 frames: 0, 2, 4), at 120 px high
    preview = results[4]["preview"]
    assert preview.shape == (3 * 120, 2 * 180, 3)
    # inside the model's centre crop (x 8..40 of 48: 30..150 of 180) the edit is the negative
    left, right = preview[:, 45:135].astype(int), preview[:, 225:315].astype(int)
    assert np.abs(255 - left - right).mean() < 12
    assert "missing.mp4: no such file" in results[2]["reason"]
    assert results[3]["reason"] == "EditRequestError: missing instruction"
    assert probe_video(tmp_path / "out" / "b.mp4").frame_count == 5
