"""The data assets through Dagster with the production tracking backend on tiny models."""

import dagster as dg
import pytest

from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.jobs import SHARD_JOB
from viva_pipelines.demo_world import generate_demo_videos
from viva_pipelines.embedded.masks import build_tiny_grounding_dino
from viva_pipelines.ingest.shards import scan_and_register
from viva_pipelines.masks.shard import KEPT, load_mask, manifest_key
from viva_pipelines.storage import Storage


@pytest.mark.slow
def test_tracked_masks_with_grounding_dino_and_sam2_from_conf(make_settings, tmp_path):
    detector = build_tiny_grounding_dino(tmp_path / "grounding-dino")
    source = tmp_path / "videos"
    generate_demo_videos(source, 2, seed=1, width=64, height=48, num_frames=6, fps=6)
    settings = make_settings(
        **{
            "storage.root": str(tmp_path / "root"),
            "sources.raw_videos.uri": str(source),
            "ingest.width": 64,
            "ingest.height": 48,
            "ingest.fps": 6,
            "ingest.max_frames": 5,
            "masks.backend": "sam2",
            "masks.phrases": ["red circle", "blue star"],
            "models.grounding_dino": str(detector),
            "masks.sam2.config": "configs/sam2.1/sam2.1_hiera_t.yaml",
            "masks.sam2.image_size": 128,
            "masks.sam2.box_threshold": 0.0,
            "masks.sam2.text_threshold": 0.0,
            "masks.sam2.max_objects": 2,
            "masks.rules.min_stability": 0.0,
        }
    )
    defs = build_definitions(settings)
    storage = Storage(settings.storage.root)
    scan_and_register(storage, Storage(str(source)), [".mp4"], 8)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("video_shards", ["shard-000000"])
        result = defs.resolve_job_def(SHARD_JOB).execute_in_process(
            partition_key="shard-000000",
            instance=instance,
            asset_selection=[dg.AssetKey("raw_videos"), dg.AssetKey("tracked_masks")],
        )
        assert result.success
    tracks = storage.read_parquet(manifest_key("shard-000000"))
    assert set(tracks["backend"]) == {"sam2"}
    assert set(tracks["video_id"].str.startswith("scene_")) == {True}
    assert set(tracks["label"].dropna()) <= {"red circle", "blue star"}
    assert tracks["status"].notna().all()
    for row in tracks.itertuples():
        if row.status == KEPT:
            assert load_mask(storage, row.mask_key).shape == (5, 48, 64)
        else:
            assert row.reason  # every dropped track or video says why
