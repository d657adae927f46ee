"""Data versions follow content: a changed raw video changes exactly the versions downstream of
it, Dagster marks exactly those stale, and the lineage audit follows the new chain."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.jobs import SHARD_JOB
from viva_pipelines.defs.lineage import LineageError, build_lineage, resolve_target
from viva_pipelines.demo_world import generate_demo_videos
from viva_pipelines.ingest.shards import scan_and_register
from viva_pipelines.storage import Storage, sha256_file

SHARDS = ["shard-000000", "shard-000001"]


def _version(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> str:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    return records[0].asset_materialization.tags["dagster/data_version"]


def _statuses(instance, defs, asset: str) -> dict[str, StaleStatus]:
    resolver = CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
    )
    return {shard: resolver.get_status(dg.AssetKey(asset), shard) for shard in SHARDS}


def test_a_changed_raw_video_changes_and_stales_exactly_its_downstream(make_settings, tmp_path):
    source = tmp_path / "videos"
    generate_demo_videos(source, 4, seed=5, width=64, height=48, num_frames=8, fps=8)
    settings = make_settings(
        **{
            "storage.root": str(tmp_path / "root"),
            "sources.raw_videos.uri": str(source),
            "ingest.shard_size": 2,
            "ingest.width": 32,
            "ingest.height": 32,
            "ingest.fps": 8,
            "ingest.max_frames": 5,
            "pairs.edit_types": ["remove", "color"],
            "qc.val_fraction": 0.0,
            "qc.image_manifest": None,  # the demo's image pairs are not rendered here
        }
    )
    defs = build_definitions(settings)
    storage = Storage(settings.storage.root)
    scan_and_register(storage, Storage(str(source)), [".mp4"], 2)
    job = defs.resolve_job_def(SHARD_JOB)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("video_shards", SHARDS)
        for shard in SHARDS:
            assert job.execute_in_process(partition_key=shard, instance=instance).success
        everything = defs.resolve_implicit_global_asset_job_def()
        assert everything.execute_in_process(
            asset_selection=[dg.AssetKey("qc_dataset")], instance=instance
        ).success
        before = {s: _version(instance, "raw_videos", s) for s in SHARDS}
        qc_before = _version(instance, "qc_dataset")
        assert set(_statuses(instance, defs, "synthetic_pairs").values()) == {StaleStatus.FRESH}

        # scene_0003 (shard-000001) is replaced by another scene under the same name.
        other = tmp_path / "other"
        generate_demo_videos(other, 1, seed=99, width=64, height=48, num_frames=8, fps=8)
        for suffix in (".mp4", ".json", ".masks.npz"):
            shutil.copyfile(other / f"scene_0000{suffix}", source / f"scene_0003{suffix}")
        for shard in SHARDS:  # re-ingest both, like `viva ingest --all`
            assert job.execute_in_process(
                partition_key=shard, instance=instance, asset_selection=[dg.AssetKey("raw_videos")]
            ).success
        after = {s: _version(instance, "raw_videos", s) for s in SHARDS}
        assert after["shard-000000"] == before["shard-000000"]
        assert after["shard-000001"] != before["shard-000001"]
        for asset in ("tracked_masks", "synthetic_pairs"):
            assert _statuses(instance, defs, asset) == {
                "shard-000000": StaleStatus.FRESH,
                "shard-000001": StaleStatus.STALE,
            }

        # Once the shard's pairs are redone, the dataset built from the old ones is stale
        # (Dagster compares an unpartitioned asset with its partitioned upstream's versions,
        # it does not look through stale-but-unchanged partitions), and rebuilding it gives a
        # new dataset version whose lineage names the new file's checksum.
        assert job.execute_in_process(partition_key="shard-000001", instance=instance).success
        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
        )
        assert resolver.get_status(dg.AssetKey("qc_dataset")) == StaleStatus.STALE
        assert everything.execute_in_process(
            asset_selection=[dg.AssetKey("qc_dataset")], instance=instance
        ).success
        assert _version(instance, "qc_dataset") != qc_before
        tree = build_lineage(instance, resolve_target(instance, "qc_dataset", None), storage)
        videos = {
            Path(video["uri"]).name: video["sha256"]
            for pairs in tree.upstream
            for raw in pairs.upstream
            if raw.asset == "raw_videos"
            for video in raw.details["videos"]
        }
        assert sorted(videos) == [f"scene_000{i}.mp4" for i in range(4)]
        assert videos["scene_0003.mp4"] == sha256_file(source / "scene_0003.mp4")


def test_a_model_target_that_names_no_version_is_one_clear_line():
    """`models:/<name>/latest` of a name never registered was `max() arg is an empty sequence`
    with a traceback; a target without a version number said "not found" with MLflow's words
    about a parameter."""
    from types import SimpleNamespace

    client = SimpleNamespace(tracking_uri="sqlite:///x.db", search_model_versions=lambda _: [])
    with pytest.raises(LineageError, match=r"no model 'nosuch' is registered in MLflow at sqlite"):
        resolve_target(None, "models:/nosuch/latest", client)
    for target in ("models:/viva-sft", "models:/viva-sft/abc", "models:/", "models:/a'b/1"):
        with pytest.raises(LineageError, match="give models:/<name>/<version number or latest>"):
            resolve_target(None, target, client)
