import json

import numpy as np
import pandas as pd
import pytest

from viva_pipelines.config.schema import TrackRulesSettings
from viva_pipelines.demo_world import random_scene, render
from viva_pipelines.demo_world.dataset import scene_annotations
from viva_pipelines.masks.shard import (
    DROPPED,
    KEPT,
    AnnotationsBackend,
    NoObjects,
    load_mask,
    manifest_key,
    track_shard,
    videos_without_masks,
)
from viva_pipelines.masks.tracks import track_rejection, track_stats
from viva_pipelines.storage import Storage
from viva_pipelines.video.annotations import sidecar_keys
from viva_pipelines.video.io import write_video


def test_track_stats_by_hand():
    masks = np.zeros((4, 10, 10), bool)
    masks[0, 2:4, 2:4] = True  # 4 px
    masks[1, 2:4, 3:5] = True  # shifted by one column: IoU 2/6
    masks[2, 2:4, 3:5] = True  # still: IoU 1
    stats = track_stats(masks)  # frame 3 empty: IoU with frame 2 is 0
    assert stats.areas == [4, 4, 4, 0]
    assert stats.bboxes == [(2, 2, 4, 4), (3, 2, 5, 4), (3, 2, 5, 4), None]
    assert stats.area_fraction == pytest.approx(12 / 400)
    assert stats.visible_fraction == 0.75
    assert stats.stability == pytest.approx((2 / 6 + 1 + 0) / 3)


def test_track_stats_of_a_one_frame_clip():
    mask = np.zeros((1, 4, 6), bool)
    mask[0, 1:3, 2:5] = True
    stats = track_stats(mask)
    assert stats.areas == [6] and stats.bboxes == [(2, 1, 5, 3)]
    assert stats.stability == 1.0 and stats.visible_fraction == 1.0


def test_videos_without_masks_say_why():
    manifest = pd.DataFrame(
        [
            {"video_id": "a", "object_id": None, "status": "dropped", "reason": "nothing detected"},
            {
                "video_id": "b",
                "object_id": 1,
                "status": "dropped",
                "reason": "lost: visible in 20%",
            },
            {
                "video_id": "b",
                "object_id": 2,
                "status": "dropped",
                "reason": "lost: visible in 10%",
            },
            {
                "video_id": "b",
                "object_id": 3,
                "status": "dropped",
                "reason": "degenerate: area 90%",
            },
            {"video_id": "c", "object_id": 1, "status": "kept", "reason": None},
            {"video_id": "c", "object_id": 2, "status": "dropped", "reason": "lost: visible in 5%"},
        ]
    )
    assert videos_without_masks(manifest).to_dict() == {
        "a": "nothing detected",
        "b": "all 3 tracks dropped: lost 2, degenerate 1",
    }


@pytest.mark.parametrize(
    ("stats_change", "word"),
    [
        ({"visible_fraction": 0.2}, "lost"),
        ({"area_fraction": 0.0001}, "degenerate"),
        ({"area_fraction": 0.9}, "degenerate"),
        ({"stability": 0.1}, "unstable"),
    ],
)
def test_bad_tracks_are_dropped_with_a_reason(stats_change, word):
    masks = np.zeros((3, 20, 20), bool)
    masks[:, 5:10, 5:10] = True
    good = track_stats(masks)
    assert track_rejection(good, TrackRulesSettings()) is None
    bad = good.__class__(**{**good.__dict__, **stats_change})
    assert word in track_rejection(bad, TrackRulesSettings())


def _ingested_shard(storage: Storage, scenes: list, with_annotations: list[bool]) -> pd.DataFrame:
    """Write videos (+ sidecars) as raw_videos would and return its manifest."""
    rows = []
    for i, (scene, annotated) in enumerate(zip(scenes, with_annotations, strict=True)):
        frames, masks = render(scene)
        key = f"raw_videos/shard-000000/v{i}.mp4"
        with storage.staged(key) as path:
            write_video(path, frames, scene.fps)
        json_key, masks_key = sidecar_keys(key)
        if annotated:
            json_bytes, npz_bytes = scene_annotations(scene, masks).to_bytes()
            storage.write_bytes(json_key, json_bytes)
            storage.write_bytes(masks_key, npz_bytes)
        rows.append(
            {
                "video_id": f"v{i}",
                "status": "ok",
                "video_key": key,
                "annotations_key": json_key if annotated else None,
                "masks_key": masks_key if annotated else None,
                "caption": scene.caption() if annotated else None,
            }
        )
    return pd.DataFrame(rows)


def test_annotations_backend_tracks_every_object_of_a_shard(tmp_path):
    storage = Storage(str(tmp_path))
    scenes = [random_scene(s, width=64, height=48, num_frames=6, fps=6) for s in (1, 2)]
    raw = _ingested_shard(storage, [*scenes, scenes[0]], [True, True, False])
    result = track_shard(storage, "shard-000000", raw, AnnotationsBackend(), TrackRulesSettings())
    m = result.manifest
    for i, scene in enumerate(scenes):
        rows = m[m["video_id"] == f"v{i}"].sort_values("object_id")
        assert list(rows["object_id"]) == [o.id for o in scene.objects]
        assert list(rows["label"]) == [o.label for o in sorted(scene.objects, key=lambda o: o.id)]
        _, masks = render(scene)
        for row in rows.itertuples():
            if row.status == KEPT:
                assert np.array_equal(load_mask(storage, row.mask_key), masks == row.object_id)
                assert json.loads(row.areas) == [
                    int(a) for a in (masks == row.object_id).sum((1, 2))
                ]
            else:
                assert row.reason and pd.isna(row.mask_key)
    unannotated = m[m["video_id"] == "v2"]
    assert list(unannotated["status"]) == [DROPPED]
    assert "no annotations" in unannotated["reason"].iloc[0]
    assert storage.read_parquet(manifest_key("shard-000000")).equals(m)
    again = track_shard(storage, "shard-000000", raw, AnnotationsBackend(), TrackRulesSettings())
    assert again.data_version == result.data_version


def test_annotations_that_do_not_match_the_frames_are_refused():
    scene = random_scene(4, width=32, height=32, num_frames=4, fps=4)
    frames, masks = render(scene)
    with pytest.raises(NoObjects, match="do not match"):
        AnnotationsBackend().track(frames[:2], scene_annotations(scene, masks), None)


def test_an_unreachable_storage_fails_the_shard_instead_of_dropping_videos(tmp_path, monkeypatch):
    """A read that fails because S3 is away says nothing about the video: the step must fail
    (and be retried by Dagster), not record a good video as dropped."""
    from botocore.exceptions import EndpointConnectionError

    from viva_pipelines.masks import shard as masks_shard

    storage = Storage(str(tmp_path))
    scenes = [random_scene(s, width=64, height=48, num_frames=6, fps=6) for s in (1, 2)]
    raw = _ingested_shard(storage, scenes, [True, True])
    real = masks_shard.load_frames

    def flaky(store, key):
        if key.endswith("v1.mp4"):
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return real(store, key)

    monkeypatch.setattr(masks_shard, "load_frames", flaky)
    with pytest.raises(EndpointConnectionError):
        track_shard(storage, "shard-000000", raw, AnnotationsBackend(), TrackRulesSettings())
    assert not storage.exists(manifest_key("shard-000000"))  # no manifest claiming a drop
