"""Editing whole videos: windows, blending, source size/rate/rotation, audio, bad requests.

The model is a stand-in whose edit of a clip is a known function of each frame (its negative),
so every output frame can be checked against exactly the frame it must come from; the real
model's path is exercised by the SFT and CLI tests.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from tests import video_fixtures as vf
from tests.conftest import write_conf
from tests.footage import ClipSpec, write_clip
from viva_pipelines import cli
from viva_pipelines.inference.batch import edit_stored_requests
from viva_pipelines.model import requests as requests_module
from viva_pipelines.model import whole_video
from viva_pipelines.model.clips import ClipGeometry
from viva_pipelines.model.requests import EditRequestError, check_request
from viva_pipelines.model.whole_video import (
    beside,
    blend_weights,
    crop_box,
    edit_batch,
    edit_video,
    edit_whole_video,
    plan_windows,
    put_back,
    window_starts,
)
from viva_pipelines.storage import Storage
from viva_pipelines.video.probe import probe_video, rotation_degrees

GEOMETRY = ClipGeometry(frames=4, frame_stride=4, height=16, width=16)


class Negative:
    """Edits a clip into its negative, frame by frame; counts its calls."""

    spec = SimpleNamespace(geometry=GEOMETRY)

    def __init__(self) -> None:
        self.clips: list[int] = []

    def prepare(self, instruction, first_frame, reference):
        return instruction

    def edit_clips(self, clips, prepared, **sampling):
        assert clips.shape[1:] == (4, 16, 16, 3)
        self.clips += [len(clip) for clip in clips]
        return 255 - clips


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


@pytest.mark.parametrize("frames", [1, 3, 4, 5, 10, 11, 23])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_batched_windows_are_the_windows_edited_one_at_a_time(frames, batch):
    """Windows planned for a batch are the ones planned one at a time (starts as
    window_starts gives them), each frame final once no later window reaches it."""
    size, step = 4, 2
    starts, written, read, exhausted = [], 0, 0, False
    while written < frames:
        # read as the stream does: the batch's frames plus one, or to the end
        read = min(frames, written + (batch - 1) * step + size + 1)
        exhausted = read == frames
        plan, done = plan_windows(read - written, exhausted, size, step, batch, min(written, 3))
        assert 1 <= len(plan) <= batch and done >= 1
        for start, first_open in plan:
            assert first_open >= 0 and start <= first_open
        starts += [written + start for start, _ in plan]
        written += done
    assert written == frames
    assert starts == [max(s, 0) for s in window_starts(frames, size, size - step)]


class WindowMean(Negative):
    """Each frame edited into its window's mean frame: the output depends on the windows."""

    def edit_clips(self, clips, prepared, **sampling):
        self.clips += [len(clip) for clip in clips]
        return np.repeat(clips.mean(axis=1, keepdims=True), clips.shape[1], axis=1).round()


def test_a_batch_of_windows_gives_the_video_of_one_window_at_a_time(tmp_path, monkeypatch):
    source = write_clip(tmp_path / "in.mp4", CLIPS["odd_rotated.mp4"])
    blended: list[np.ndarray] = []  # each frame's cross-faded edit, before encoding

    def recording_put_back(frame, edited, geometry, source_small=None):
        blended.append(edited)
        return put_back(frame, edited, geometry, source_small)

    monkeypatch.setattr(whole_video, "put_back", recording_put_back)
    one = edit_whole_video(
        WindowMean(), source, "x", tmp_path / "1.mp4", window_batch=1, progress=False
    )
    singly, blended[:] = list(blended), []
    model = WindowMean()
    many = edit_whole_video(model, source, "x", tmp_path / "3.mp4", window_batch=3, progress=False)
    assert one.windows == many.windows == len(model.clips) and len(blended) == one.frames
    for a, b in zip(singly, blended, strict=True):
        assert np.array_equal(a, b)


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
    # the default keeps the source where the model changed nothing (here: grey levels near 128)
    expected = [put_back(f, 255 - GEOMETRY.fit(f), GEOMETRY, GEOMETRY.fit(f)) for f in frames]
    for index, got in enumerate(edited):
        error = np.abs(got.astype(int) - expected[index]).mean()
        assert error < 4, (index, error)  # its own frame's edit, through the codec
        if index > 0 and np.abs(expected[index].astype(int) - expected[index - 1]).mean() > 12:
            assert np.abs(got.astype(int) - expected[index - 1]).mean() > error
    assert len(model.clips) == len(window_starts(len(frames), 4, 2))


def test_preserve_unchanged_keeps_the_original_pixels_where_the_model_changed_nothing(tmp_path):
    source = write_clip(
        tmp_path / "in.mp4",
        CLIPS["ntsc.mov"].__class__("mp4-h264", 128, 96, Fraction(25), 8, "yuv444p"),
    )

    class CornerOnly(Negative):
        def edit_clips(self, clips, prepared, **sampling):
            out = clips.copy()
            out[:, :, :6, :6] = 255 - out[:, :, :6, :6]
            return out

    plain = edit_whole_video(
        CornerOnly(), source, "x", tmp_path / "a.mp4", progress=False, preserve_unchanged=False
    )
    kept = edit_whole_video(CornerOnly(), source, "x", tmp_path / "b.mp4", progress=False)
    src, a, b = (np.stack(_upright_frames(p)).astype(int) for p in (source, plain.path, kept.path))
    far = (slice(None), slice(60, None), slice(40, None))  # away from the changed corner
    assert np.abs(b[far] - src[far]).mean() < np.abs(a[far] - src[far]).mean() / 2
    corner = (slice(None), slice(0, 20), slice(16, 36))  # the crop's top-left corner, changed
    assert np.abs(b[corner] - src[corner]).mean() > 30


@pytest.fixture
def edit_cli(tmp_path, monkeypatch, project):
    """``viva edit`` over ``project``'s conf (``inference.crf`` 23 and ``window_batch`` 2 in
    conf/local), the model resolved to nothing: returns ``(run, seen)``, ``run(*flags)`` the
    exit code of a request with those flags, ``seen`` the options of each edit it started."""
    write_conf(project, "local", "inference.yaml", {"inference": {"crf": 23, "window_batch": 2}})
    monkeypatch.setenv("VIVA_CONF_DIR", str(project / "conf"))
    monkeypatch.delenv("VIVA_ENV", raising=False)
    monkeypatch.setattr(requests_module, "resolve_model", lambda uri, **_: tmp_path)
    seen: list[dict] = []

    def recording_edit_video(model, video, instruction, out, **options):
        seen.append(options)
        return whole_video.EditedVideo(Path(out), 4, 24.0, 64, 48, 1, 0.1, False)

    monkeypatch.setattr(whole_video, "edit_video", recording_edit_video)
    video = vf.good_video(tmp_path / "in.mp4", frames=4)
    out = str(tmp_path / "o.mp4")
    request = ["edit", "--model", "m", "--video", str(video), "--instruction", "x", "--out", out]
    return (lambda *flags: cli.main([*request, *flags])), seen


def test_viva_edit_takes_each_option_it_is_not_given_from_the_inference_settings(edit_cli):
    """`viva edit` and `edited_videos` edit alike: a flag left out is the configured
    ``inference.*``, and a flag given wins (``--no-preserve-unchanged`` included)."""
    run, seen = edit_cli
    assert run() == 0
    assert run("--crf", "30", "--no-preserve-unchanged", "--seed", "5", "--steps", "3") == 0
    configured, given = seen
    assert {k: configured[k] for k in ("crf", "window_batch", "preserve_unchanged", "seed")} == {
        "crf": 23,
        "window_batch": 2,
        "preserve_unchanged": True,
        "seed": 0,
    }
    assert configured["num_steps"] is None and configured["guidance_scale"] is None
    assert (given["crf"], given["preserve_unchanged"], given["seed"]) == (30, False, 5)
    assert (given["num_steps"], given["window_batch"]) == (3, 2)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--crf", "99"], "inference.crf: Input should be less than or equal to 51 (got 99)"),
        (["--window-batch", "0"], "inference.window_batch: Input should be greater than 0"),
        (["--steps", "0"], "inference.num_steps: Input should be greater than 0"),
        (["--guidance", "0.5"], "inference.guidance_scale: Input should be greater than or equal"),
    ],
)
def test_viva_edit_refuses_a_flag_its_setting_would_refuse_before_editing(
    edit_cli, capsys, flags, message
):
    """A flag is its ``inference.*`` setting and is validated as the configuration is: an out
    of range value is one clear error naming the flags and the setting, before any model loads
    (``--steps 0`` was the model's default steps, ``--crf 99`` went to the encoder)."""
    run, seen = edit_cli
    assert run(*flags) == 2
    assert f"viva edit's flags: {message}" in capsys.readouterr().err
    assert seen == []


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
    with pytest.raises(EditRequestError, match="video /dev/zero: not a regular file"):
        check_request("/dev/zero", "x", out)  # it was "no such file"
    with pytest.raises(EditRequestError, match="reference /dev/null: not a regular file"):
        check_request(video, "x", out, "/dev/null")
    out.write_bytes(b"old")
    with pytest.raises(EditRequestError, match=r"out\.mp4 exists \(pass --overwrite"):
        check_request(video, "x", out)
    check_request(video, "x", out, overwrite=True)
    for name in ("out.gif", "out.avi", "out"):  # each was an MP4 under a name that says otherwise
        with pytest.raises(EditRequestError, match=rf"{name}: the edit is written as an H.264"):
            check_request(video, "x", tmp_path / name)
    check_request(video, "x", tmp_path / "out.MOV")
    with pytest.raises(EditRequestError, match="is a folder; name the output file"):
        check_request(video, "x", tmp_path, overwrite=True)  # was replaced after the edit
    with pytest.raises(EditRequestError, match="a folder, not a video file"):
        check_request(tmp_path, "x", out, overwrite=True)
    with pytest.raises(EditRequestError, match="a folder, not an image file"):
        check_request(video, "x", out, tmp_path, overwrite=True)
    with pytest.raises(EditRequestError, match="cannot create the output folder"):
        check_request(video, "x", video / "sub" / "o.mp4")
    # A reference that is not a picture, or one that declares 900 million pixels, is refused
    # before the model loads (the bomb was a Pillow traceback).
    (tmp_path / "text.png").write_text("not a picture")
    (tmp_path / "bomb.png").write_bytes(vf.png_bomb())
    for name, why in [("text.png", "UnidentifiedImageError"), ("bomb.png", "DecompressionBomb")]:
        with pytest.raises(EditRequestError, match=rf"{name}: not a readable image \({why}"):
            edit_video(
                tmp_path / "no-model", video, "x", out, reference=tmp_path / name, overwrite=True
            )
    code = cli.main(
        [
            "edit",
            "--model",
            str(tmp_path),
            "--video",
            str(tmp_path / "nope.mp4"),
            "--instruction",
            "x",
            "--out",
            str(tmp_path / "o.mp4"),
        ]
    )
    assert code == 2 and not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("damage", ["truncated", "corrupt_middle"])
def test_a_video_that_stops_decoding_is_named_and_leaves_no_output(tmp_path, damage):
    """Its header opens, its frames stop decoding part-way: the error was FFmpeg's alone
    ("Invalid data found when processing input: 'avcodec_send_packet()'"), naming no file."""
    broken = vf.truncated(tmp_path) if damage == "truncated" else vf.corrupt_middle(tmp_path)
    out = tmp_path / "out.mp4"
    with pytest.raises(EditRequestError, match=rf"video {broken}: cannot be decoded after frame"):
        edit_whole_video(Negative(), broken, "invert", out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [broken.name]  # no partial file


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
        load,
        requests.read_text().splitlines(),
        beside(tmp_path),
        progress=False,
        preview_frames=3,
    )
    assert len(loads) == 1
    assert [(r["line"], r["status"]) for r in results] == [
        (1, "ok"),
        (2, "failed"),
        (3, "failed"),
        (4, "failed"),
        (6, "ok"),
        (7, "failed"),
    ]
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


def test_stored_requests_on_s3_are_fetched_edited_uploaded_and_checksummed(
    tmp_path, s3_endpoint, s3_bucket
):
    """edited_videos' library half: requests and videos on S3, outputs to S3, one manifest
    row per line with the checksums that tie each output to its input."""
    root = Storage(f"s3://{s3_bucket}/requests", endpoint_url=s3_endpoint)
    sink = Storage(f"s3://{s3_bucket}/out", endpoint_url=s3_endpoint)
    video = vf.good_video(tmp_path / "a.mp4", frames=6)
    root.put_file(video, "clips/a.mp4")
    lines = [
        {"video": "clips/a.mp4", "instruction": "invert", "out": "a.mp4"},
        {"video": "clips/a.mp4", "instruction": "invert", "out": "./a.mp4"},  # taken
        {"video": "clips/../../a.mp4", "instruction": "invert", "out": "b.mp4"},
        {"video": "clips/a.mp4", "instruction": "invert", "out": "../c.mp4"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    root.write_bytes("requests.jsonl", ("\ufeff" + text).encode())  # a BOM first, as Windows
    done = edit_stored_requests(
        Negative,
        f"s3://{s3_bucket}/requests/requests.jsonl",
        root,
        sink,
        "run-1",
        tmp_path / "scratch",
        endpoint_url=s3_endpoint,
        progress=False,
        preview_frames=2,
    )
    rows = done.manifest
    assert rows["status"].tolist() == ["ok", "failed", "failed", "failed"]
    assert "a.mp4 is already line 1's output" in rows["reason"][1]
    assert "escapes its root" in rows["reason"][2] and "escapes its root" in rows["reason"][3]
    assert sink.exists("run-1/manifest.parquet") and sink.exists("run-1/previews/line-1.png")
    assert rows["uri"][0] == f"s3://{s3_bucket}/out/run-1/a.mp4"
    with sink.local_path("run-1/a.mp4") as local:
        assert hashlib.sha256(local.read_bytes()).hexdigest() == rows["sha256"][0]
        assert probe_video(local).frame_count == 6
    assert rows["source_sha256"][0] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert not list((tmp_path / "scratch").rglob("*.mp4"))  # uploaded, not kept


@pytest.mark.parametrize("missing", ["model", "requests"])
def test_edited_videos_fails_at_once_when_a_configured_input_does_not_exist(
    make_settings, tmp_path, missing
):
    """A model folder or requests file that is not there fails the step once, with its one-line
    reason: the step's retry policy is for outages, and retried this took minutes to end in
    "Exceeded max_retries"."""
    import dagster as dg

    from viva_pipelines.definitions import build_definitions

    model = tmp_path / "model"
    if missing != "model":
        model.mkdir()
        (model / requests_module.MODEL_FILE).write_text("{}")
    requests = tmp_path / "requests.jsonl"
    if missing != "requests":
        requests.write_text('{"video": "v.mp4", "instruction": "x", "out": "o.mp4"}\n')
    settings = make_settings(
        **{
            "storage.root": str(tmp_path / "root"),
            "inference.model": str(model),
            "inference.requests": str(requests),
        }
    )
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[dg.AssetKey("edited_videos")], instance=instance, raise_on_error=False
        )
    events = {event.event_type_value for event in result.all_events}
    assert not result.success and "STEP_UP_FOR_RETRY" not in events
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    reason = {
        "model": "not a VIVA model directory",
        "requests": "requests.jsonl: no such file",
    }[missing]
    assert reason in failure.step_failure_data.user_failure_data.description
