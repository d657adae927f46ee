"""One item that raises inside a per-shard step becomes a ``failed`` row with a one-line reason;
the rest of the shard completes with its outputs intact, and the asset counts failures by reason.

Each test injects an exception into one per-video or per-pair step of a real shard (demo videos
with annotations, plus one plain video without any) run through Dagster.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tests import video_fixtures as vf
from viva_pipelines.config.schema import QcSettings
from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.jobs import SHARD_JOB
from viva_pipelines.demo_world import generate_demo_videos
from viva_pipelines.ingest.shards import scan_and_register
from viva_pipelines.masks import shard as masks
from viva_pipelines.pairs import shard as pairs
from viva_pipelines.qc import dataset as qc
from viva_pipelines.storage import Storage

SHARD = "shard-000000"
PLAIN = "plain.mp4"  # real footage without annotations


@pytest.fixture
def shard_settings(make_settings, tmp_path: Path):
    source = tmp_path / "videos"
    generate_demo_videos(source, 3, seed=3, width=64, height=48, num_frames=8, fps=8)
    vf.good_video(source / PLAIN, frames=8, size=(64, 48), fps=8)
    settings = make_settings(
        **{
            "storage.root": str(tmp_path / "root"),
            "sources.raw_videos.uri": str(source),
            "ingest.width": 64,
            "ingest.height": 48,
            "ingest.fps": 8,
            "ingest.max_frames": 5,
            "pairs.edit_types": ["remove", "color", "tone"],
        }
    )
    scan_and_register(Storage(settings.storage.root), Storage(str(source)), [".mp4"], 8)
    return settings


def _run_shard(settings) -> dict[str, dict]:
    """Materialize the shard job; returns each asset's metadata (plain values)."""
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("video_shards", [SHARD])
        result = defs.resolve_job_def(SHARD_JOB).execute_in_process(
            partition_key=SHARD, instance=instance, raise_on_error=False
        )
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        return {
            node: {
                k: v.value
                for k, v in result.asset_materializations_for_node(node)[0].metadata.items()
            }
            for node in ("raw_videos", "tracked_masks", "synthetic_pairs")
        }


def _video_id(storage: Storage, source_key: str) -> str:
    raw = storage.read_parquet(f"raw_videos/{SHARD}/manifest.parquet")
    return raw.set_index("source_key").loc[source_key, "video_id"]


def _check_one_line(reason: str, words: str) -> None:
    assert words in reason and "\n" not in reason and "Traceback" not in reason, reason


def test_a_video_and_an_object_that_fail_tracking_leave_the_rest_of_the_shard(
    shard_settings, monkeypatch
):
    storage = Storage(shard_settings.storage.root)
    real_frames, real_stats = masks.load_frames, masks.track_stats
    calls = {"stats": 0}

    def load_frames(storage_, key):
        if "scene_0000" in key:
            raise RuntimeError("decoder crashed\n  at frame 3")
        return real_frames(storage_, key)

    def track_stats(mask):
        calls["stats"] += 1
        if calls["stats"] == 1:  # the first object of the first tracked video
            raise ValueError("cannot reshape array of size 0 into shape (0,newaxis)")
        return real_stats(mask)

    monkeypatch.setattr(masks, "load_frames", load_frames)
    monkeypatch.setattr(masks, "track_stats", track_stats)
    metadata = _run_shard(shard_settings)

    tracks = storage.read_parquet(masks.manifest_key(SHARD))
    failed = tracks[tracks["status"] == "failed"]
    assert len(failed) == 2
    video = failed[failed["object_id"].isna()].iloc[0]
    assert video["video_id"].startswith("scene_0000")
    _check_one_line(video["reason"], "RuntimeError: decoder crashed at frame 3")
    obj = failed[failed["object_id"].notna()].iloc[0]
    _check_one_line(obj["reason"], "ValueError: cannot reshape")
    kept = tracks[tracks["status"] == masks.KEPT]
    assert len(kept) >= 2 and not kept["video_id"].str.startswith("scene_0000").any()
    for row in kept.itertuples():
        assert masks.load_mask(storage, row.mask_key).shape == (5, 48, 64)
    assert sum(metadata["tracked_masks"]["failures"].values()) == 2
    # the plain video has no annotations: no masks, said why, and it still gets global pairs
    plain = _video_id(storage, PLAIN)
    without = metadata["tracked_masks"]["videos_without_masks"]
    assert any("has no annotations" in reason for reason in without)
    gaps = metadata["synthetic_pairs"]["videos_without_local_pairs"]
    assert sum(gaps.values()) == 2  # the plain video and the one whose tracking failed
    pair_rows = storage.read_parquet(pairs.manifest_key(SHARD))
    plain_pairs = pair_rows[pair_rows["video_id"] == plain]
    assert list(plain_pairs["edit_type"]) == ["tone"] and (plain_pairs["status"] == "ok").all()


def test_a_pair_and_an_edit_type_that_fail_leave_the_rest_of_the_shard(shard_settings, monkeypatch):
    storage = Storage(shard_settings.storage.root)
    real_generate, real_metrics = pairs.generate_pairs, pairs.pair_metrics

    def generate_pairs(frames, objects, caption, edit_types, *args, **kwargs):
        if edit_types == ["color"]:  # every video's colour pairs
            raise RuntimeError("backend out of memory")
        return real_generate(frames, objects, caption, edit_types, *args, **kwargs)

    def pair_metrics(source, target, mask, **kwargs):
        if mask.all():  # the global (tone) pairs
            raise ZeroDivisionError("division by zero")
        return real_metrics(source, target, mask, **kwargs)

    monkeypatch.setattr(pairs, "generate_pairs", generate_pairs)
    monkeypatch.setattr(pairs, "pair_metrics", pair_metrics)
    metadata = _run_shard(shard_settings)

    manifest = storage.read_parquet(pairs.manifest_key(SHARD)).set_index("pair_id")
    ok, failed = manifest[manifest["status"] == "ok"], manifest[manifest["status"] == "failed"]
    assert set(ok["edit_type"]) == {"remove"} and len(ok) == 3  # one per annotated video
    assert set(failed["edit_type"]) == {"color", "tone"}
    for pair_id, row in failed.iterrows():
        words = "RuntimeError: backend" if row.edit_type == "color" else "ZeroDivisionError"
        _check_one_line(row.reason, words)
        assert not storage.exists(f"synthetic_pairs/{SHARD}/{pair_id}")  # nothing half-written
    for row in ok.itertuples():
        assert storage.exists(row.target_key) and storage.exists(row.mask_key)
    assert metadata["synthetic_pairs"]["pairs"] == 3
    assert metadata["synthetic_pairs"]["failures"] == {
        "RuntimeError: backend out of memory": 4,
        "ZeroDivisionError: division by zero": 4,
    }

    # QC carries the failed pairs as rejected and builds the dataset from the rest
    result = qc.build_qc_dataset(storage, [manifest.reset_index()], QcSettings())
    videos = result.manifest[result.manifest["modality"] == "video"]
    assert len(videos) == len(manifest)
    assert (
        videos.loc[videos["edit_type"] != "remove", "reason"]
        .str.startswith("generation failed")
        .all()
    )


def test_a_video_with_only_local_edit_types_and_no_objects_says_why_it_has_no_pairs(
    shard_settings,
):
    settings = shard_settings.model_copy(
        update={"pairs": shard_settings.pairs.model_copy(update={"edit_types": ["remove"]})}
    )
    _run_shard(settings)
    storage = Storage(settings.storage.root)
    manifest = storage.read_parquet(pairs.manifest_key(SHARD)).set_index("video_id")
    row = manifest.loc[_video_id(storage, PLAIN)]
    assert row["status"] == pairs.NO_PAIRS
    assert "has no annotations" in row["reason"]
    result = qc.build_qc_dataset(storage, [manifest.reset_index()], QcSettings())
    assert _video_id(storage, PLAIN) not in set(result.manifest["video_id"])


def test_a_pair_whose_qc_raises_is_a_failed_row_and_the_dataset_completes(monkeypatch, tmp_path):
    rows = pd.DataFrame(
        [
            {
                "pair_id": f"v{i}-tone-0",
                "video_id": f"v{i}",
                "shard": SHARD,
                "edit_type": "tone",
                "status": "ok",
                "instruction": "warmer",
                "frames_source": 5,
                "frames_target": 5,
                "mask_fraction": 1.0,
                "mask_stability": 1.0,
                "inside_change": 0.2,
                "outside_change": 0.0,
                "total_change": 0.2,
                "key_source": "a.png",
                "key_target": "b.png",
                "key_mask": "c.png",
            }
            for i in range(3)
        ]
    )
    calls: list[str] = []

    def qc_rejection(metrics, edit_type, thresholds):  # the rules pass all but the 2nd pair
        calls.append(edit_type)
        if len(calls) == 2:
            raise KeyError("mask_fraction")
        return None

    monkeypatch.setattr(qc, "qc_rejection", qc_rejection)
    result = qc.build_qc_dataset(Storage(str(tmp_path)), [rows], QcSettings())
    videos = result.manifest[result.manifest["modality"] == "video"].set_index("pair_id")
    assert list(videos["status"]) == ["accepted", "failed", "accepted"]
    assert videos.loc["v1-tone-0", "reason"] == "KeyError: 'mask_fraction'"
    assert (result.manifest["modality"] == "image").sum() == 2
