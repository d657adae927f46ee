"""Ingestion of a shard holding good files, every kind of bad file, and sidecar annotations."""

import json
import os
import shutil
from pathlib import Path

import boto3
import dagster as dg
import numpy as np
import pandas as pd
import pytest

from tests import video_fixtures as vf
from viva_pipelines import cli
from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.ingest import ingest_options
from viva_pipelines.defs.jobs import SHARD_JOB
from viva_pipelines.ingest.raw_videos import (
    OK,
    REJECTED,
    ingest_shard,
    manifest_data_version,
    manifest_key,
    shard_is_current,
)
from viva_pipelines.ingest.shards import load_registry, scan_and_register, shard_members
from viva_pipelines.storage import Storage
from viva_pipelines.video.annotations import Annotations, sidecar_keys
from viva_pipelines.video.io import read_video, write_video

RAW_ONLY = [dg.AssetKey("raw_videos")]
SPEC = {"ingest.width": 32, "ingest.height": 32, "ingest.fps": 5, "ingest.max_frames": 9}

#: file name in the source → the words its rejection reason must contain (None: must be ok)
EXPECTED = {
    "good.mp4": None,
    "annotated.mp4": None,
    "vfr.mp4": None,
    "rotated.mp4": None,
    "pts_from_dts.mp4": None,
    "blink.mp4": "too short once normalised",
    "empty.mp4": "empty",
    "truncated.mp4": "truncated",
    "corrupt.mp4": "corrupt",
    "image.mp4": "not a video",
    "text.mp4": "not a video",
    "audio.mp4": "no video stream",
    "zero_fps.mp4": "frame rate",
    "single.mp4": "frames",
    "huge.mp4": "10000x10000",
    "escape.mp4": "refused: 'escape.mp4' resolves outside",  # a symlink out of the source
    "pipe.mp4": "not a regular file",  # a FIFO: it was "missing (deleted after registration?)"
}


def _move(made: Path, target: Path) -> None:
    shutil.move(made, target)


def _annotated_video(path: Path) -> Annotations:
    """A 64x48 video at 10 fps with a white square moving right, and its mask sidecar."""
    frames = np.zeros((20, 48, 64, 3), np.uint8)
    masks = np.zeros((20, 48, 64), np.uint8)
    for t in range(20):
        frames[t, 16:32, 2 * t : 2 * t + 16] = 255
        masks[t, 16:32, 2 * t : 2 * t + 16] = 1

    write_video(path, frames, 10)
    ann = Annotations("a white square on black", [{"id": 1, "label": "white square"}], masks)
    json_bytes, npz_bytes = ann.to_bytes()
    json_key, masks_key = sidecar_keys(str(path))
    Path(json_key).write_bytes(json_bytes)
    Path(masks_key).write_bytes(npz_bytes)
    return ann


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    src, scratch = tmp_path / "source", tmp_path / "scratch"
    src.mkdir()
    scratch.mkdir()
    vf.good_video(src / "good.mp4", frames=24, size=(64, 48), fps=10)
    _annotated_video(src / "annotated.mp4")
    _move(vf.variable_frame_rate(scratch, [0, 100, 150, 400, 500, 900, 1000]), src / "vfr.mp4")
    _move(vf.rotated(scratch, 90, frames=6), src / "rotated.mp4")
    _move(vf.pts_copied_from_dts(scratch), src / "pts_from_dts.mp4")
    vf.good_video(src / "blink.mp4", frames=3, size=(64, 48), fps=100)  # one tick at 5 fps
    _move(vf.zero_byte(scratch), src / "empty.mp4")
    _move(vf.truncated(scratch), src / "truncated.mp4")
    _move(vf.corrupt_middle(scratch), src / "corrupt.mp4")
    _move(vf.wrong_container(scratch, "png"), src / "image.mp4")
    _move(vf.wrong_container(scratch, "text"), src / "text.mp4")
    _move(vf.audio_only(scratch), src / "audio.mp4")
    _move(vf.zero_fps(scratch), src / "zero_fps.mp4")
    _move(vf.single_frame(scratch), src / "single.mp4")
    _move(vf.huge_declared_size(scratch), src / "huge.mp4")
    vf.good_video(scratch / "outside.mp4", frames=24, size=(64, 48), fps=10)
    (src / "escape.mp4").symlink_to(scratch / "outside.mp4")
    os.mkfifo(src / "pipe.mp4")
    assert sorted(p.name for p in src.glob("*.mp4")) == sorted(EXPECTED)
    (src / "notes.txt").write_text("not a video")
    return src


@pytest.fixture
def settings(make_settings, source_dir: Path, tmp_path: Path):
    return make_settings(
        **SPEC,
        **{
            "ingest.shard_size": 64,
            "storage.root": str(tmp_path / "root"),
            "sources.raw_videos.uri": str(source_dir),
        },
    )


def _ingest(settings) -> tuple[Storage, pd.DataFrame]:
    storage, source = Storage(settings.storage.root), Storage(settings.sources.raw_videos.uri)
    registry, _ = scan_and_register(storage, source, [".mp4"], settings.ingest.shard_size)
    members = shard_members(registry, "shard-000000")
    result = ingest_shard(storage, source, "shard-000000", members, ingest_options(settings))
    return storage, result.manifest


def test_every_file_gets_one_row_ok_or_rejected_with_its_reason(settings):
    storage, manifest = _ingest(settings)
    assert sorted(manifest["source_key"]) == sorted(EXPECTED)
    for row in manifest.itertuples():
        expected = EXPECTED[row.source_key]
        if expected is None:
            assert row.status == OK, f"{row.source_key}: {row.reason}"
            assert storage.exists(row.video_key)
        else:
            assert row.status == REJECTED, row.source_key
            assert expected.lower() in row.reason.lower(), f"{row.source_key}: {row.reason!r}"
            assert "unexpected" not in row.reason, "an expected refusal, said as one"
            assert pd.isna(row.video_key)
    stored = storage.read_parquet(manifest_key("shard-000000"))
    pd.testing.assert_frame_equal(stored, manifest)
    assert manifest_data_version(stored) == manifest_data_version(manifest)


def test_timestamp_repairs_are_recorded_in_the_manifest(settings):
    _, manifest = _ingest(settings)
    rows = manifest.set_index("source_key")
    assert "re-timed" in rows.loc["pts_from_dts.mp4", "source_timestamp_repair"]
    assert pd.isna(rows.loc["good.mp4", "source_timestamp_repair"])
    assert rows.loc["pts_from_dts.mp4", "frames"] >= 2


def test_ok_videos_are_normalised_and_checksummed(settings, source_dir: Path):
    storage, manifest = _ingest(settings)
    good = manifest.set_index("source_key").loc["good.mp4"]
    assert (good.source_width, good.source_height, good.source_frames) == (64, 48, 24)
    assert good.source_fps == pytest.approx(10)
    assert good.source_sha256 == vf_sha256(source_dir / "good.mp4")
    with storage.local_path(good.video_key) as local:
        frames, fps = read_video(local)
    assert frames.shape == (9, 32, 32, 3) and fps == pytest.approx(5)
    assert (good.width, good.height, good.frames, good.fps) == (32, 32, 9, 5)
    # 5 fps from 10 fps keeps every other source frame: 0, 2, 4, ...
    levels = [vf.level_index(frame.mean()) for frame in frames]
    assert levels == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    rotated = manifest.set_index("source_key").loc["rotated.mp4"]
    assert rotated.source_rotation in (90, -90, 270)


def vf_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sidecar_masks_follow_the_frames(settings):
    storage, manifest = _ingest(settings)
    row = manifest.set_index("source_key").loc["annotated.mp4"]
    assert row.caption == "a white square on black"
    assert json.loads(row.labels) == ["white square"]
    ann = Annotations.from_bytes(
        storage.read_bytes(row.annotations_key), storage.read_bytes(row.masks_key)
    )
    with storage.local_path(row.video_key) as local:
        frames, _ = read_video(local)
    assert ann.masks.shape == frames.shape[:3]
    bright = frames.mean(axis=-1) > 128
    agreement = (bright == (ann.masks == 1)).mean()
    assert agreement > 0.97, agreement
    assert pd.isna(manifest.set_index("source_key").loc["good.mp4"].annotations_key)


def test_a_broken_sidecar_keeps_the_video_and_records_why(settings, source_dir: Path):
    json_key, masks_key = sidecar_keys(str(source_dir / "good.mp4"))
    ann = Annotations("x", [{"id": 1, "label": "x"}], np.zeros((3, 48, 64), np.uint8))
    json_bytes, npz_bytes = ann.to_bytes()  # 3 mask frames for a 24-frame video
    Path(json_key).write_bytes(json_bytes)
    Path(masks_key).write_bytes(npz_bytes)
    _, manifest = _ingest(settings)
    row = manifest.set_index("source_key").loc["good.mp4"]
    assert row.status == OK and pd.isna(row.annotations_key)
    assert "frame" in row.annotation_error.lower()


def test_reingest_is_deterministic_and_cleans_up_after_a_file_goes_bad(settings, source_dir):
    storage, first = _ingest(settings)
    _, second = _ingest(settings)
    assert manifest_data_version(first) == manifest_data_version(second)
    good_key = first.set_index("source_key").loc["good.mp4"].video_key
    (source_dir / "good.mp4").write_bytes(b"")  # the file was overwritten by a failed upload
    _, third = _ingest(settings)
    assert manifest_data_version(third) != manifest_data_version(first)
    assert third.set_index("source_key").loc["good.mp4"].status == REJECTED
    assert not storage.exists(good_key)


def test_materialize_through_dagster_reports_counts_and_data_version(settings):
    defs = build_definitions(settings)
    storage = defs.resources["storage"].get()
    registry, _ = scan_and_register(
        storage, defs.resources["video_source"].get(), [".mp4"], settings.ingest.shard_size
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("video_shards", ["shard-000000"])
        result = defs.resolve_job_def(SHARD_JOB).execute_in_process(
            partition_key="shard-000000", instance=instance, asset_selection=RAW_ONLY
        )
        assert result.success
        event = result.asset_materializations_for_node("raw_videos")[0]
        metadata = {k: v.value for k, v in event.metadata.items()}
        ok = sum(words is None for words in EXPECTED.values())
        assert metadata["videos_ok"] == ok
        assert metadata["videos_rejected"] == len(EXPECTED) - ok
        assert "empty.mp4" in metadata["rejected_reasons"]
        assert metadata["source_files_skipped"] == {".txt": 1}  # sidecars are not counted
        assert metadata["preview"].startswith("![first frames](data:image/png;base64,")
        manifest = storage.read_parquet(manifest_key("shard-000000"))
        assert event.tags["dagster/data_version"] == manifest_data_version(manifest)
        assert shard_is_current(storage, "shard-000000", shard_members(registry, "shard-000000"))


def test_sensor_registers_shards_requests_runs_and_respects_its_cursor(make_settings, tmp_path):
    src = tmp_path / "incoming"
    src.mkdir()
    for i in range(5):
        vf.good_video(src / f"clip{i}.mp4", frames=4, size=(16, 16))
    settings = make_settings(
        **{
            "ingest.shard_size": 2,
            "sensor.max_runs_per_tick": 2,
            "sources.raw_videos.uri": str(src),
            "storage.root": str(tmp_path / "root"),
        }
    )
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("raw_video_sensor")
    with dg.instance_for_test() as instance:

        def tick(cursor):
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources=defs.resources
            )
            result = sensor(context)
            for request in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            return result

        first = tick(None)
        assert [(r.partition_key, r.run_key) for r in first.run_requests] == [
            ("shard-000000", "shard-000000@2"),
            ("shard-000001", "shard-000001@2"),
        ]
        assert instance.get_dynamic_partitions("video_shards") == [
            "shard-000000",
            "shard-000001",
            "shard-000002",
        ]
        second = tick(first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["shard-000002"]
        assert tick(second.cursor).run_requests == []  # nothing new: nothing requested
        vf.good_video(src / "clip5.mp4", frames=4, size=(16, 16))
        fourth = tick(second.cursor)
        assert [r.run_key for r in fourth.run_requests] == ["shard-000002@2"]
        assert len(load_registry(Storage(settings.storage.root))) == 6


def test_an_empty_source_is_nothing_to_ingest_for_the_sensor_and_the_cli(
    make_settings, tmp_path, monkeypatch, capsys
):
    """A new deployment's empty (or not yet created) source: the sensor ticks with nothing to
    request and `viva ingest` says there is nothing to ingest (both raised KeyError 'key':
    the empty listing's row mask selected no columns)."""
    src = tmp_path / "incoming"
    src.mkdir()
    root = {"storage.root": str(tmp_path / "root")}
    defs = build_definitions(make_settings(**root, **{"sources.raw_videos.uri": str(src)}))
    sensor = defs.resolve_sensor_def("raw_video_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=defs.resources)
        assert not sensor(context).run_requests
    assert load_registry(Storage(str(tmp_path / "root"))).empty
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    for source in (src, tmp_path / "not-yet"):
        settings = make_settings(**root, **{"sources.raw_videos.uri": str(source)})
        monkeypatch.setattr(cli, "get_settings", lambda settings=settings: settings)
        assert cli.main(["ingest"]) == 0
        assert "nothing to ingest" in capsys.readouterr().out


def test_s3_source_and_s3_root_by_configuration_alone(
    make_settings, s3_endpoint: str, s3_bucket: str, tmp_path: Path
):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    local = tmp_path / "upload"
    local.mkdir()
    vf.good_video(local / "a.mp4", frames=12)
    _annotated_video(local / "b.mp4")
    (local / "broken.mp4").write_bytes(b"")
    for path in local.iterdir():
        client.upload_file(str(path), s3_bucket, f"incoming/{path.name}")
    settings = make_settings(
        **SPEC,
        **{
            "storage.root": f"s3://{s3_bucket}/pipeline",
            "storage.s3.endpoint_url": s3_endpoint,
            "sources.raw_videos.uri": f"s3://{s3_bucket}/incoming",
            "mlflow.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        },
    )
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=defs.resources)
        tick = defs.resolve_sensor_def("raw_video_sensor")(context)
        assert [r.partition_key for r in tick.run_requests] == ["shard-000000"]
        instance.add_dynamic_partitions("video_shards", ["shard-000000"])
        result = defs.resolve_job_def(SHARD_JOB).execute_in_process(
            partition_key="shard-000000", instance=instance, asset_selection=RAW_ONLY
        )
        assert result.success
    stored = Storage(settings.storage.root, endpoint_url=s3_endpoint)
    manifest = stored.read_parquet(manifest_key("shard-000000")).set_index("source_key")
    assert list(manifest["status"].sort_index()) == [OK, OK, REJECTED]
    assert manifest.loc["a.mp4", "source_uri"] == f"s3://{s3_bucket}/incoming/a.mp4"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    for column in ("video_key", "annotations_key", "masks_key"):
        assert f"pipeline/{manifest.loc['b.mp4', column]}" in keys
    assert "pipeline/video_shards/registry.parquet" in keys


def test_davis_style_png_masks_are_carried_like_sidecars(make_settings, tmp_path: Path):
    from PIL import Image

    src = tmp_path / "davis"
    (src / "bear.masks").mkdir(parents=True)
    frames = np.zeros((10, 48, 64, 3), np.uint8)
    for t in range(10):
        frames[t, 10:30, 4 * t : 4 * t + 16] = (200, 120, 40)  # object 1, moving right
        frames[t, 36:46, 40:60] = (40, 200, 90)  # object 2, still
        index = np.zeros((48, 64), np.uint8)
        index[10:30, 4 * t : 4 * t + 16] = 1
        index[36:46, 40:60] = 2
        index[0:2, :] = 255  # void border, as DAVIS marks unlabeled pixels
        png = Image.fromarray(index, mode="P")
        png.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        png.save(src / "bear.masks" / f"{t:05d}.png")
    write_video(src / "bear.mp4", frames, 10)
    (src / "bear.json").write_text(
        json.dumps({"caption": "a bear", "objects": [{"id": 1, "label": "bear"}]})
    )
    settings = make_settings(
        **SPEC, **{"storage.root": str(tmp_path / "root"), "sources.raw_videos.uri": str(src)}
    )
    storage, manifest = _ingest(settings)
    row = manifest.iloc[0]
    assert row.status == OK and pd.isna(row.annotation_error)
    assert json.loads(row.labels) == ["bear", "object 2"]
    ann = Annotations.from_bytes(
        storage.read_bytes(row.annotations_key), storage.read_bytes(row.masks_key)
    )
    assert ann.masks.shape == (row.frames, 32, 32)
    assert set(np.unique(ann.masks)) == {0, 1, 2}  # the void border became background
    with storage.local_path(row.video_key) as local:
        decoded, _ = read_video(local)
    orange = (decoded[..., 0] > 150) & (decoded[..., 2] < 100)
    assert (orange == (ann.masks == 1)).mean() > 0.97
