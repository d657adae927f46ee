"""Fuzzed real-codec footage through the whole data graph: ingest → masks → pairs → QC.

Each example writes a handful of clips with random containers and codecs, geometry, frame
rates, durations, pixel formats, rotations, timestamp orders and annotations
(:mod:`tests.footage`), materializes their shard through Dagster and builds the QC dataset.
Nothing may raise; every input is ``ok`` or rejected with a one-line reason; every ``ok``
video ends with pairs or a recorded reason for having none.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.footage import ClipSpec, clip_specs, write_clip
from viva_pipelines.config.schema import QcSettings
from viva_pipelines.definitions import build_definitions
from viva_pipelines.defs.jobs import SHARD_JOB
from viva_pipelines.ingest import raw_videos
from viva_pipelines.ingest.shards import scan_and_register
from viva_pipelines.masks import shard as masks
from viva_pipelines.pairs import shard as pairs
from viva_pipelines.qc import dataset as qc
from viva_pipelines.storage import Storage

SHARD = "shard-000000"
INGEST_FPS = 8
FUZZ = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _surely_usable(spec: ClipSpec) -> bool:
    """Clips that must come out ``ok``: enough frames even if a demuxer drops the leading
    ones (negative pts), and long enough for a few frames at the ingest rate."""
    return spec.frames >= 6 and spec.frames / spec.fps >= 4 / INGEST_FPS


@FUZZ
@given(specs=st.lists(clip_specs(), min_size=3, max_size=6))
def test_any_footage_flows_through_the_data_graph(make_settings, tmp_path_factory, specs):
    root = tmp_path_factory.mktemp("footage")
    source = root / "source"
    source.mkdir()
    names = {}
    for index, spec in enumerate(specs):
        name = f"clip_{index}{spec.fmt.suffix}"
        write_clip(source / name, spec)
        names[name] = spec
    settings_ = make_settings(
        **{
            "storage.root": str(root / "store"),
            "sources.raw_videos.uri": str(source),
            "ingest.width": 32,
            "ingest.height": 32,
            "ingest.fps": INGEST_FPS,
            "ingest.max_frames": 9,
            "ingest.shard_size": 64,
        }
    )
    storage = Storage(settings_.storage.root)
    scan_and_register(storage, Storage(str(source)), settings_.sources.raw_videos.extensions, 64)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("video_shards", [SHARD])
        result = (
            build_definitions(settings_)
            .resolve_job_def(SHARD_JOB)
            .execute_in_process(partition_key=SHARD, instance=instance, raise_on_error=False)
        )
        assert result.success, [e.message for e in result.all_events if e.is_failure]

    raw = storage.read_parquet(raw_videos.manifest_key(SHARD)).set_index("source_key")
    assert sorted(raw.index) == sorted(names)  # every input has its row
    for name, row in raw.iterrows():
        spec = names[name]
        if row["status"] == raw_videos.OK:
            assert row["frames"] >= 2
            continue
        assert row["status"] == raw_videos.REJECTED and row["reason"], name
        assert "\n" not in row["reason"] and "unexpected error" not in row["reason"], row["reason"]
        assert not _surely_usable(spec), f"{name} {spec}: {row['reason']}"

    tracks = storage.read_parquet(masks.manifest_key(SHARD))
    assert set(tracks["status"]) <= {masks.KEPT, masks.DROPPED, "failed"}
    assert tracks.loc[tracks["status"] != masks.KEPT, "reason"].notna().all()
    assert (tracks["status"] != "failed").all(), tracks.loc[tracks["status"] == "failed", "reason"]

    pair_rows = storage.read_parquet(pairs.manifest_key(SHARD))
    assert (pair_rows["status"] != "failed").all(), pair_rows["reason"].dropna().tolist()
    ok_videos = raw.loc[raw["status"] == raw_videos.OK, "video_id"]
    for video_id in ok_videos:
        rows = pair_rows[pair_rows["video_id"] == video_id]
        assert len(rows), f"{video_id} has neither pairs nor a reason"
        assert (rows["status"] == "ok").any() or rows["reason"].notna().all()

    dataset = qc.build_qc_dataset(storage, [pair_rows], QcSettings())
    assert set(dataset.manifest["status"]) <= {qc.ACCEPTED, qc.REJECTED}
    assert not pd.isna(dataset.data_version)
