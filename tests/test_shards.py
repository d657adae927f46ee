from __future__ import annotations

from pathlib import Path

import boto3
import pandas as pd
import pytest

from viva_pipelines.ingest.shards import (
    REGISTRY_COLUMNS,
    assign_new_videos,
    load_registry,
    load_skipped,
    plan_shard_runs,
    scan_and_register,
    shard_members,
    video_id_for,
)
from viva_pipelines.ingest.sources import list_source, skipped_text
from viva_pipelines.storage import Storage

EXTENSIONS = [".mp4", ".mov"]


def listing(keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"key": keys, "size": 1, "version": "v1"})


def empty_registry() -> pd.DataFrame:
    return pd.DataFrame(columns=REGISTRY_COLUMNS)


def test_new_videos_fill_the_open_shard_then_open_new_ones():
    registry, new = assign_new_videos(empty_registry(), listing([f"v{i}.mp4" for i in range(5)]), 2)
    assert list(registry["shard"]) == ["shard-000000"] * 2 + ["shard-000001"] * 2 + ["shard-000002"]
    assert len(new) == 5
    registry, new = assign_new_videos(registry, listing(["x.mp4", "y.mp4", "z.mp4"]), 2)
    assert list(new["shard"]) == ["shard-000002", "shard-000003", "shard-000003"]


def test_a_video_never_moves_and_sealed_shards_never_grow():
    first, _ = assign_new_videos(empty_registry(), listing(["m1.mp4", "m2.mp4", "m3.mp4"]), 2)
    # new keys that sort before the old ones must not reshuffle anything
    keys = ["a.mp4", "b.mp4", "m1.mp4", "m2.mp4", "m3.mp4", "z.mp4"]
    second, new = assign_new_videos(first, listing(keys), 2)
    pd.testing.assert_frame_equal(second.iloc[: len(first)], first)
    assert set(new["key"]) == {"a.mp4", "b.mp4", "z.mp4"}
    sizes = second.groupby("shard").size()
    assert sizes["shard-000000"] == 2  # sealed before, still exactly its two videos
    assert (sizes <= 2).all()
    again, nothing = assign_new_videos(second, listing(keys), 2)
    assert nothing.empty and again.equals(second)


def test_assignment_is_deterministic_whatever_the_listing_order():
    keys = [f"clip{i:02d}.mp4" for i in range(7)]
    one, _ = assign_new_videos(empty_registry(), listing(keys), 3)
    two, _ = assign_new_videos(empty_registry(), listing(list(reversed(keys))), 3)
    pd.testing.assert_frame_equal(one, two)


def test_video_ids_are_unique_and_storage_safe():
    ids = [video_id_for(k) for k in ["a b/clip 1.mp4", "c/clip 1.mp4", "../évil/x.mov", ".mp4"]]
    assert len(set(ids)) == 4
    for vid in ids:
        assert all(ch.isalnum() or ch in "-_" for ch in vid) and vid.isascii()
    assert ids[0].startswith("clip_1-")


def test_plan_requests_grown_shards_once_and_bounds_each_tick():
    registry, _ = assign_new_videos(
        empty_registry(), listing([f"v{i:02d}.mp4" for i in range(9)]), 2
    )
    runs, cursor = plan_shard_runs(registry, {}, max_runs=3)
    assert [r.shard for r in runs] == ["shard-000000", "shard-000001", "shard-000002"]
    runs2, cursor = plan_shard_runs(registry, cursor, max_runs=3)
    assert [r.shard for r in runs2] == ["shard-000003", "shard-000004"]
    runs3, cursor = plan_shard_runs(registry, cursor, max_runs=3)
    assert runs3 == []  # a re-enabled sensor with nothing new requests nothing
    registry, _ = assign_new_videos(registry, listing(["w.mp4"]), 2)
    runs4, _ = plan_shard_runs(registry, cursor, max_runs=3)
    assert [(r.shard, r.size, r.run_key) for r in runs4] == [("shard-000004", 2, "shard-000004@2")]


def test_scan_and_register_persists_and_ignores_non_videos(tmp_path: Path):
    source_dir = tmp_path / "src"
    (source_dir / "cam").mkdir(parents=True)
    for name in ["cam/a.mp4", "b.MOV", "c.mp4", "notes.txt", "c.json", ".hidden.mp4"]:
        (source_dir / name).write_bytes(b"data")
    storage, source = Storage(str(tmp_path / "root")), Storage(str(source_dir))
    registry, new = scan_and_register(storage, source, EXTENSIONS, shard_size=2)
    assert list(registry["key"]) == ["b.MOV", "c.mp4", "cam/a.mp4"]
    assert len(new) == 3
    (source_dir / "d.mp4").write_bytes(b"data")
    registry2, new2 = scan_and_register(storage, source, EXTENSIONS, shard_size=2)
    assert list(new2["key"]) == ["d.mp4"]
    pd.testing.assert_frame_equal(load_registry(storage), registry2)
    assert list(shard_members(registry2, "shard-000001")["key"]) == ["cam/a.mp4", "d.mp4"]


def test_skipped_files_are_counted_by_extension_but_sidecars_are_not(tmp_path: Path):
    source_dir = tmp_path / "src"
    (source_dir / "clip.masks").mkdir(parents=True)
    names = [
        "clip.mp4",
        "clip.json",
        "clip.masks.npz",
        "clip.masks/00000.png",  # a video + sidecars
        "old.MPG",
        "b.mpg",
        "notes.txt",
        "orphan.json",
        "README",
        ".DS_Store",
    ]
    for name in names:
        (source_dir / name).write_bytes(b"data")
    storage, source = Storage(str(tmp_path / "root")), Storage(str(source_dir))
    assert load_skipped(storage) == {}
    registry, _ = scan_and_register(storage, source, EXTENSIONS, shard_size=2)
    assert list(registry["key"]) == ["clip.mp4"]
    expected = {"(hidden)": 1, "(no extension)": 1, ".json": 1, ".mpg": 2, ".txt": 1}
    assert load_skipped(storage) == expected
    assert skipped_text(expected) == (
        "6 files: (hidden) 1, (no extension) 1, .json 1, .mpg 2, .txt 1"
    )
    # with the MPEG extension configured they are listed, and the count follows
    scan_and_register(storage, source, [*EXTENSIONS, ".mpg"], shard_size=2)
    assert load_skipped(storage) == {"(hidden)": 1, "(no extension)": 1, ".json": 1, ".txt": 1}


def test_s3_listing_with_boto3_matches_the_filesystem_listing(s3_endpoint: str, s3_bucket: str):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for key in ["in/a.mp4", "in/sub/b.mov", "in/readme.md", "other/c.mp4"]:
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"1234")
    source = Storage(f"s3://{s3_bucket}/in", endpoint_url=s3_endpoint)
    with_boto = list_source(source, EXTENSIONS, s3_client=client)
    with_fs = list_source(source, EXTENSIONS)
    assert list(with_boto.videos["key"]) == ["a.mp4", "sub/b.mov"]
    assert list(with_fs.videos["key"]) == list(with_boto.videos["key"])
    assert list(with_boto.videos["size"]) == [4, 4]
    assert with_boto.skipped == with_fs.skipped == {".md": 1}


@pytest.mark.parametrize("size", [0, -1])
def test_shard_size_must_be_positive(size: int):
    with pytest.raises(ValueError, match="shard_size"):
        assign_new_videos(empty_registry(), listing(["a.mp4"]), size)
